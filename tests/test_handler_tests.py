"""`make test-handler`: a notebook's own `#| test` cells, run top to bottom by papermill in a
fresh kernel. The shipped notebooks pass on the embedded model; a failure names the
notebook, the cell and the line, and says what the assert got."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from llmkit import handler_tests
from llmkit.paths import REPO_ROOT

# The recipes, as a user runs `make test-handler NOTEBOOK=...`. handler_dev's own test cells
# run in test_notebook.py (Run All, twice, in a Jupyter kernel) and test_jupyter_browser.py
# (Run All in Chromium): a third run here would add a minute and prove nothing new.
NOTEBOOKS = ["recipes/system_prompt", "recipes/word_count", "recipes/context_lookup",
             "recipes/json_output"]


def run_test_handler(notebook, *args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "llmkit.handler_tests", str(notebook), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})





def write(path, *cells):
    """cells: code sources, or ("md", text)."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    for i, cell in enumerate(cells):
        nb.cells.append(new_markdown_cell(cell[1], id=f"md-{i}") if isinstance(cell, tuple)
                        else new_code_cell(cell, id=f"c{i}"))
    nbformat.write(nb, path)
    return path


ECHO = '#| export\nasync def handler(job):\n    yield {"text": job["input"]["prompt"].upper()}'


@pytest.fixture
def echo_notebook(tmp_path, tiny_model_dir):
    """A handler that needs no engine, and two tests: one passes, one fails unless the
    `expected` parameter is injected."""
    return write(
        tmp_path / "echo.ipynb", ("md", "# Echo"),
        '#| parameters\nexpected = "Paris"',
        f"from llmkit.notebook import setup\nfrom llmkit.runtime import run_job\n\n"
        f"setup(model={str(tiny_model_dir)!r})",
        ECHO,
        '#| test\n# A prompt comes back in capitals.\n'
        'assert (await run_job(handler, {"prompt": "paris"}))[0]["text"] == "PARIS"',
        '#| test\n# Rome is not Paris.\n\n[chunk] = await run_job(handler, {"prompt": "rome"})\n'
        'assert chunk["text"] == expected',
        'print("after the tests")')


@pytest.mark.vllm
def test_a_failing_test_names_its_cell_and_line_and_what_it_got(echo_notebook, tmp_path):
    executed = tmp_path / "out.ipynb"
    result = run_test_handler(echo_notebook, "-o", executed)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert failed == ["FAILED echo.ipynb: cell 5 (id c5), line 5: AssertionError: assert "
                      "chunk['text'] == expected"], result.stderr
    assert "  left:  'ROME'\n  right: 'Paris'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # The run stopped there; the executed notebook shows where.
    cells = {c.id: c for c in nbformat.read(executed, as_version=4).cells}
    assert cells["c6"].get("execution_count") is None


@pytest.mark.vllm
def test_parameters_are_injected_as_papermill_injects_them(echo_notebook, tmp_path):
    result = run_test_handler(echo_notebook, "-p", "expected", "ROME", "-o", tmp_path / "out.ipynb")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok  cell 4 (id c4)" in result.stdout and ": A prompt comes back in capitals." \
        in result.stdout
    assert "echo.ipynb: 2 tests passed" in result.stdout


def test_a_handler_that_does_not_export_fails_before_any_cell_runs(tmp_path):
    notebook = write(tmp_path / "nb.ipynb", ECHO, "#| exprot\nx = 1", "#| test\nassert True")
    result = run_test_handler(notebook, "-o", tmp_path / "out.ipynb", timeout=120)
    assert result.returncode == 1
    assert "FAILED nb.ipynb: cell 1 (id c1), line 1: unknown marker '#| exprot'" in result.stderr
    assert not (tmp_path / "out.ipynb").exists()


def test_a_notebook_without_tests_is_an_error(tmp_path):
    result = run_test_handler(write(tmp_path / "nb.ipynb", ECHO), "-o", tmp_path / "out.ipynb",
                          timeout=120)
    assert result.returncode == 1
    assert "no cell is marked test" in result.stderr


@pytest.mark.engine
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_shipped_notebooks_pass_their_own_tests_on_the_embedded_model(name, tmp_path):
    """`make test-handler` on each recipe, as a user runs it."""
    notebook = REPO_ROOT / "notebooks" / f"{name}.ipynb"
    tests = len(handler_tests.test_cells(nbformat.read(notebook, as_version=4)))
    assert tests >= 1, "each shipped notebook has tests of its own"
    env = {"MODEL": "SmolLM2-135M-Instruct", "MAX_MODEL_LEN": "1024"}
    result = run_test_handler(notebook, "-o", tmp_path / "out.ipynb", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{tests} test{'s' * (tests != 1)} passed" in result.stdout, result.stdout
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    setup = next(c for c in executed.cells if c.get("id") == "setup")
    shown = "".join(o.get("text", "") for o in setup.outputs)
    assert "SmolLM2-135M-Instruct" in shown, json.dumps(setup.outputs)
