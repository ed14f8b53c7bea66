"""papermill runs the whole development notebook on the tiny model, as CI and users would."""

from __future__ import annotations

import json

import nbformat
import papermill
import pytest

pytestmark = pytest.mark.engine
KERNEL = "runpod-llm-kit"  # registered by `make install`, bound to the project's venv


def cell_stdout(nb, cell_id):
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_notebook_runs_end_to_end_with_injected_parameters(repo_root, tiny_model_dir, tmp_path):
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(repo_root / "notebooks" / "handler_dev.ipynb"), str(out),
        parameters={"model": str(tiny_model_dir), "max_model_len": 256},
        kernel_name=KERNEL, cwd=str(repo_root / "notebooks"), progress_bar=False,
        execution_timeout=600,
    )
    nb = nbformat.read(out, as_version=4)
    # papermill injected our model after the `parameters` cell.
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert str(tiny_model_dir) in injected.source
    assert f"MODEL = {tiny_model_dir}" in cell_stdout(nb, "setup")
    assert "engine ready in" in cell_stdout(nb, "start-engine")
    # The playground rendered a widget.
    playground = next(c for c in nb.cells if c.get("id") == "playground")
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for o in playground.outputs)
    # What the sample jobs computed, through the very handler that gets exported.
    summary = json.loads(cell_stdout(nb, "summary").strip().splitlines()[-1])
    assert summary["stream_chunks"] >= 1 and summary["stream_text"]
    assert summary["normal"] == [{"text": summary["stream_text"]}]  # greedy: same text
    assert summary["bad"] == [{"error": "input.prompt must not be empty"}]
