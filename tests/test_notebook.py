"""The development notebook in a real kernel: Run All twice keeps one engine, a restart
replaces it, the playground reports its figures; its parameters reach the engine through the
environment, as in the worker. (test_handler_tests.py runs it, and each recipe, as
`make test-handler` does.)"""

from __future__ import annotations

import json
import os

import nbformat
import pytest

KERNEL = "runpod-llm-kit"  # registered by `make install`, bound to the project's venv


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


# The setup cell imports the runtime's run_job, and with it vLLM.
@pytest.mark.vllm
def test_empty_parameters_keep_the_environments_values(repo_root, engine_env):
    engine_env.setenv("MAX_MODEL_LEN", "777")
    engine_env.setenv("CONCURRENCY_MODIFIER", "3")
    run_setup(repo_root)
    assert os.environ["MAX_MODEL_LEN"] == "777"
    assert os.environ["CONCURRENCY_MODIFIER"] == "3"


@pytest.mark.vllm
def test_empty_parameters_without_environment_leave_the_handlers_default(repo_root,
                                                                         engine_env):
    run_setup(repo_root)
    assert not any(name in os.environ for name in ENGINE_ENV if name != "MODEL")


@pytest.mark.vllm
def test_a_set_parameter_wins_over_the_environment(repo_root, engine_env, tiny_model_dir):
    engine_env.setenv("MAX_MODEL_LEN", "777")
    run_setup(repo_root, max_model_len=256, model=str(tiny_model_dir))
    assert os.environ["MAX_MODEL_LEN"] == "256"
    assert os.environ["MODEL"] == str(tiny_model_dir.resolve())


COUNT_ENGINES = """
import json, psutil
def engine_cores():
    return sorted(p.pid for p in psutil.Process().children(recursive=True)
                  if "EngineCore" in p.name() + " ".join(p.cmdline()))
print("ENGINES", json.dumps(engine_cores()))
"""
PLAYGROUND = """
shown = playground(handler)
chunks = await shown.run()
print("PLAYGROUND", json.dumps({"answer": shown.answer.value, "status": shown.status.value,
                                "last": chunks[-1]}))
"""
RESTART = """
import os
from llmkit.runtime import engine
os.environ["MAX_MODEL_LEN"] = "128"
restart_engine()
print("RESTARTED", engine().model_config.max_model_len)
"""


@pytest.mark.engine
def test_run_all_twice_in_one_kernel_keeps_one_engine_and_a_restart_replaces_it(
        repo_root, tiny_model_dir):
    """Run All twice, as a user does, then change a setting and restart: one engine
    process at every point, and the restart's engine has the new setting."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    nb = nbformat.read(repo_root / "notebooks" / "handler_dev.ipynb", as_version=4)
    cells = list(nb.cells)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                            resources={"metadata": {"path": str(repo_root / "notebooks")}})
    env = {**os.environ, "MODEL": str(tiny_model_dir), "MAX_MODEL_LEN": "256"}

    def run(source):
        cell = new_code_cell(source)
        nb.cells.append(cell)
        client.execute_cell(cell, len(nb.cells) - 1)
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    with client.setup_kernel(env=env):
        seen = []
        for _ in range(2):  # Run All, twice
            for index, cell in enumerate(cells):
                client.execute_cell(cell, index)
            seen.append(run(COUNT_ENGINES))
        played = json.loads(run(PLAYGROUND).split("PLAYGROUND", 1)[1])
        restarted = run(RESTART)
        seen.append(run("print('ENGINES', json.dumps(engine_cores()))"))
    first, second, after = (json.loads(out.split("ENGINES", 1)[1]) for out in seen)
    assert len(first) == 1 and second == first, seen  # the same engine, not a second one
    assert "RESTARTED 128" in restarted, restarted
    # The playground's Generate, as a person clicks it: the answer and its figures.
    last, status = played["last"], played["status"]
    assert played["answer"] and last["finish_reason"] in ("stop", "length"), played
    assert status.startswith("first text ") and " s · " in status, status
    assert f"{last['usage']['prompt_tokens']} prompt + {last['usage']['completion_tokens']} " \
        "answer tokens" in status, status
    assert f"stopped: {last['finish_reason']} (" in status, status
    assert len(after) == 1 and after != first, seen  # the old one gone, a new one up


@pytest.mark.parametrize("cell, shown", [
    ("from llmkit.models import resolve\nresolve('org/absent')",
     "ModelError: MODEL='org/absent' is not in Runpod's model cache"),
    ("from llmkit.runtime.config import load\nload({'MODEL': 'm', 'CONCURRENCY_MODIFIER': 'x'})",
     "SettingsError: CONCURRENCY_MODIFIER='x' is not valid"),
])
def test_a_kit_error_shows_in_the_notebook_as_its_message_not_a_traceback(
        cell, shown, capsys, monkeypatch, tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "runpod-volume"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    shell = InteractiveShell.instance()  # IPython, as the notebook's kernel runs a cell
    try:
        result = shell.run_cell(cell)
    finally:
        InteractiveShell.clear_instance()
    out = capsys.readouterr().out
    assert result.error_in_exec is not None and shown in out, out
    assert "Traceback" not in out and "File " not in out, out


def test_the_readme_shows_the_notebooks_handler_as_it_is(repo_root):
    """The README's handler, and the notebook page's setup cell, are the notebook's cells,
    verbatim: the docs cannot drift from what a newcomer opens."""
    nb = nbformat.read(repo_root / "notebooks" / "handler_dev.ipynb", as_version=4)
    cells = {c.get("id"): c.source for c in nb.cells}
    assert f"```python\n{cells['handler']}\n```" in (repo_root / "README.md").read_text()
    indented = "\n".join(f"   {line}" if line else "" for line in cells["setup"].splitlines())
    assert indented in (repo_root / "docs" / "NOTEBOOK.md").read_text()
