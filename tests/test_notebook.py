"""The development notebook: papermill runs all of it on the tiny model, as CI and users
would; its parameters reach the handler through the environment, as in the worker."""

from __future__ import annotations

import json
import os

import nbformat
import papermill
import pytest

KERNEL = "runpod-llm-kit"  # registered by `make install`, bound to the project's venv


def cell_stdout(nb, cell_id):
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.engine
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


def run_setup(repo_root, **injected):
    """Run the `parameters` and `setup` cells as papermill does, with ``injected`` as the
    parameters it would inject between them; return the environment they leave."""
    nb = nbformat.read(repo_root / "notebooks" / "handler_dev.ipynb", as_version=4)
    cells = {c.get("id"): c.source for c in nb.cells}
    namespace = {}
    exec(cells["parameters"], namespace)
    namespace.update(injected)
    exec(cells["setup"], namespace)


ENGINE_ENV = ("MODEL", "MAX_MODEL_LEN", "DTYPE", "ENFORCE_EAGER", "GPU_MEMORY_UTILIZATION",
              "MAX_NUM_SEQS", "CONCURRENCY_MODIFIER")


@pytest.fixture
def engine_env(monkeypatch, tiny_model_dir):
    """The image's environment: its model and settings, restored after the test."""
    for name in ENGINE_ENV:
        monkeypatch.setenv(name, "")  # so that monkeypatch restores it, set or not
        monkeypatch.delenv(name)
    monkeypatch.setenv("MODEL", str(tiny_model_dir))
    return monkeypatch


def test_empty_parameters_keep_the_environments_values(repo_root, engine_env):
    engine_env.setenv("MAX_MODEL_LEN", "777")
    engine_env.setenv("CONCURRENCY_MODIFIER", "3")
    run_setup(repo_root)
    assert os.environ["MAX_MODEL_LEN"] == "777"
    assert os.environ["CONCURRENCY_MODIFIER"] == "3"


def test_empty_parameters_without_environment_leave_the_handlers_default(repo_root,
                                                                         engine_env):
    run_setup(repo_root)
    assert not any(name in os.environ for name in ENGINE_ENV if name != "MODEL")


def test_a_set_parameter_wins_over_the_environment(repo_root, engine_env, tiny_model_dir):
    engine_env.setenv("MAX_MODEL_LEN", "777")
    run_setup(repo_root, max_model_len=256, model=str(tiny_model_dir))
    assert os.environ["MAX_MODEL_LEN"] == "256"
    assert os.environ["MODEL"] == str(tiny_model_dir.resolve())
