"""The exporter on fixture notebooks: every error names notebook, cell and line."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from llmkit import export
from llmkit.runtime.versions import API_VERSION

GOOD_HANDLER = '''async def handler(job):
    yield {"text": job["input"]["prompt"]}'''
GOOD_REST = '''GREETING = "hi"'''


def make_notebook(path, *cells):
    """cells: (source, tags) pairs, or a plain string for a markdown cell."""
    nb = new_notebook()
    for i, cell in enumerate(cells):
        if isinstance(cell, str):
            nb.cells.append(new_markdown_cell(cell, id=f"md-{i}"))
        else:
            source, tags = cell
            code = new_code_cell(source, id=f"cell-{i}")
            if tags:
                code.metadata["tags"] = list(tags)
            nb.cells.append(code)
    nbformat.write(nb, path)
    return path


def problems_of(path):
    with pytest.raises(export.ExportError) as caught:
        export.export(path)
    return caught.value.problems


def test_good_notebook_exports_tagged_cells_in_order(tmp_path):
    nb = make_notebook(tmp_path / "nb.ipynb", "# intro", ("x_untagged = 1", ()),
                       (GOOD_REST, ["export"]), ("print('playground')", ()),
                       (GOOD_HANDLER, ["export"]))
    text = export.export(nb)
    assert "x_untagged" not in text and "playground" not in text
    assert text.index('GREETING = "hi"') < text.index("async def handler")
    # Provenance header: notebook, cell ids, "do not edit".
    assert "GENERATED FILE - DO NOT EDIT" in text
    assert "nb.ipynb" in text and "cell-2, cell-4" in text
    # The runtime API it was written for, checked first when run as the worker.
    assert f'require("{API_VERSION}")' in text
    assert text.index("require(") < text.index("async def handler")
    # Footer: the runtime serves the handler, only when run as the worker.
    assert text.rstrip().endswith(
        'serve(handler, chat_messages=globals().get("chat_messages"))')
    compile(text, "handler.py", "exec")


def test_output_is_deterministic_and_ignores_execution_state(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", (GOOD_REST, ["export"]),
                         (GOOD_HANDLER, ["export"]))
    first = export.export(path)
    nb = nbformat.read(path, as_version=4)
    for n, cell in enumerate(nb.cells, start=7):  # as if the notebook had been run
        cell.execution_count = n
        cell.outputs = [nbformat.v4.new_output("stream", text=f"run {n}\n")]
    nbformat.write(nb, path)
    assert export.export(path) == first
    assert "In[" not in first and "execution_count" not in first


@pytest.mark.parametrize("line, shown", [
    ("%pip install numpy", "%pip install numpy"),
    ("!ls -la", "!ls -la"),
    ("files = !ls", "files = !ls"),
    ("len?", "len?"),
])
def test_magics_and_shell_escapes_are_refused_with_their_line(tmp_path, line, shown):
    source = f"import os\n{line}\nx = 1"
    path = make_notebook(tmp_path / "nb.ipynb", "# md", (GOOD_REST, ["export"]),
                         (source, ["export"]), (GOOD_HANDLER, ["export"]))
    [problem] = problems_of(path)
    assert (problem.cell_index, problem.cell_id, problem.line) == (2, "cell-2", 2)
    assert shown in problem.message
    assert "nb.ipynb: cell 2 (id cell-2), line 2: IPython magic" in str(problem)


def test_cell_magic_is_refused_at_line_1(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", (GOOD_REST, ["export"]),
                         ("%%time\nx = sum(range(10))", ["export"]), (GOOD_HANDLER, ["export"]))
    [problem] = problems_of(path)
    assert (problem.cell_index, problem.line) == (1, 1)
    assert "%%time" in problem.message


def test_unknown_tag_is_an_error(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", (GOOD_REST, ["export"]),
                         ("y = 2", ["exprot"]), (GOOD_HANDLER, ["export"]))
    [problem] = problems_of(path)
    assert problem.cell_index == 1 and problem.cell_id == "cell-1"
    assert "unknown tag 'exprot'" in problem.message and "export" in problem.message


def test_parameters_tags_are_allowed(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", ("model = ''", ["parameters"]),
                         ("model = 'x'", ["injected-parameters"]),
                         (GOOD_REST, ["export"]), (GOOD_HANDLER, ["export"]))
    assert "model = " not in export.export(path)


def test_markers_in_the_cells_text_work_as_the_tags_do(tmp_path):
    """nbdev's spelling, `#| export` as the first line; the marker lines stay out of
    handler.py, and a cell may carry the tag, the marker, or both."""
    path = make_notebook(tmp_path / "nb.ipynb", ("#| parameters\nmodel = ''", ["parameters"]),
                         ("#|export\n" + GOOD_REST, ()), ("#| test\nassert 1", ()),
                         ("#| export\n" + GOOD_HANDLER, ["export"]))
    text = export.export(path)
    assert "#|" not in text and "model = " not in text and "assert 1" not in text
    assert text.index('GREETING = "hi"') < text.index("async def handler")
    compile(text, "handler.py", "exec")


def test_a_misspelt_marker_fails_the_export_naming_cell_and_line(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", (GOOD_REST, ["export"]),
                         ("\n#| exprot\ny = 2", ()), (GOOD_HANDLER, ["export"]))
    [problem] = problems_of(path)
    assert (problem.cell_index, problem.cell_id, problem.line) == (1, "cell-1", 2)
    assert "unknown marker '#| exprot'" in problem.message
    assert "'#| export'" in problem.message  # says what it may be


def test_a_marker_below_the_code_is_a_comment(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", ("#| export\n" + GOOD_HANDLER, ()),
                         ("x = 1\n#| exprot", ()))
    assert "x = 1" not in export.export(path)


@pytest.mark.parametrize("source", [
    "\n\n" + GOOD_HANDLER,                          # leading blank lines
    GOOD_HANDLER.replace("\n", "   \n") + "  ",      # trailing spaces
    GOOD_HANDLER.replace("\n", "\r\n") + "\r\n",    # Windows line endings
    "#| export\n\n" + GOOD_HANDLER.replace("\n", "\r\n"),
])
def test_blank_first_lines_trailing_spaces_and_crlf_are_plain_python(tmp_path, source):
    path = make_notebook(tmp_path / "nb.ipynb", (source, ["export"]))
    text = export.export(path)
    assert "\r" not in text and " \n" not in text
    assert "async def handler(job):\n    yield" in text


def test_lines_keep_the_cells_numbers_below_markers(tmp_path):
    """An error's line is the cell's line, as Jupyter numbers it, marker lines included."""
    path = make_notebook(tmp_path / "nb.ipynb", ("#| export\n\nx = 1\ny = helper", ()),
                         ("#| export\n" + GOOD_HANDLER, ()))
    [problem] = problems_of(path)
    assert (problem.cell_index, problem.line) == (0, 4), problem
    path = make_notebook(tmp_path / "nb.ipynb", ("#| export\nx = 1\n%time x", ()),
                         ("#| export\n" + GOOD_HANDLER, ()))
    [problem] = problems_of(path)
    assert (problem.cell_index, problem.line) == (0, 3), problem


def test_syntax_error_names_cell_and_line(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", (GOOD_REST, ["export"]),
                         ("x = 1\ndef broken(:\n    pass", ["export"]), (GOOD_HANDLER, ["export"]))
    [problem] = problems_of(path)
    assert (problem.cell_index, problem.line) == (1, 2)
    assert "syntax error" in problem.message


def test_undefined_name_names_cell_and_line(tmp_path):
    # Defined only in an untagged cell: fine in Jupyter, a NameError in handler.py.
    path = make_notebook(tmp_path / "nb.ipynb", ("helper = str.upper", ()),
                         (GOOD_REST, ["export"]),
                         ("def shout(s):\n    return helper(s)", ["export"]),
                         (GOOD_HANDLER, ["export"]))
    [problem] = problems_of(path)
    assert (problem.cell_index, problem.cell_id, problem.line) == (2, "cell-2", 2)
    assert "undefined name 'helper'" in problem.message


def test_the_handler_must_be_defined(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", ("import os", ["export"]))
    messages = " | ".join(p.message for p in problems_of(path))
    assert "undefined name 'handler'" in messages and "generated footer" in messages


def test_missing_handler_is_an_error(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", (GOOD_REST + "\nhandler = None", ["export"]))
    [problem] = problems_of(path)
    assert "handler" in problem.message


def test_handler_must_be_an_async_generator(tmp_path):
    sync = "def handler(job):\n    return {'text': 'hi'}"
    path = make_notebook(tmp_path / "nb.ipynb", (GOOD_REST, ["export"]), (sync, ["export"]))
    [problem] = problems_of(path)
    assert (problem.cell_index, problem.line) == (1, 1)
    assert "async generator" in problem.message
    no_yield = "async def handler(job):\n    return None"
    make_notebook(tmp_path / "nb.ipynb", (GOOD_REST, ["export"]), (no_yield, ["export"]))
    assert "async generator" in problems_of(path)[0].message


def test_notebook_without_export_cells(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", ("x = 1", ()))
    assert "no code cell is marked export" in problems_of(path)[0].message


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llmkit.export", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_then_check_mode_detects_drift(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", (GOOD_REST, ["export"]),
                         (GOOD_HANDLER, ["export"]))
    out = tmp_path / "build" / "handler.py"
    assert run_cli(path, "-o", out).returncode == 0
    first = out.read_bytes()
    assert run_cli(path, "-o", out).returncode == 0
    assert out.read_bytes() == first  # byte-identical on a second run
    assert run_cli(path, "-o", out, "--check").returncode == 0
    # Edit the notebook without re-exporting: check mode must fail and say what to run.
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source += "\nEXTRA = 2"
    nbformat.write(nb, path)
    stale = run_cli(path, "-o", out, "--check")
    assert stale.returncode == 1
    assert "out of date" in stale.stderr and "make export-handler" in stale.stderr
    assert "+EXTRA = 2" in stale.stderr
    assert out.read_bytes() == first  # --check writes nothing


def test_cli_reports_every_problem_and_fails(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", ("!pip list", ["export"]), ("y = 1", ["oops"]))
    result = run_cli(path, "-o", tmp_path / "h.py")
    assert result.returncode == 1
    assert "cell 0 (id cell-0), line 1" in result.stderr
    assert "cell 1 (id cell-1)" in result.stderr and "unknown tag 'oops'" in result.stderr
    assert not (tmp_path / "h.py").exists()


# --- export_notebook(): from inside Jupyter ------------------------------------------------

def project_with_notebook(root):
    (root / "notebooks").mkdir(parents=True)
    return make_notebook(root / "notebooks" / "handler_dev.ipynb", (GOOD_HANDLER, ["export"]))


def test_export_notebook_writes_the_projects_build_handler(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MODE_TO_RUN", raising=False)
    workspace = tmp_path / "workspace"  # a pod's volume: no clone, notebooks/ in it
    notebook = project_with_notebook(workspace)
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))  # Jupyter names the notebook so
    written = export.export_notebook()
    assert written == workspace / "build" / "handler.py"
    assert written.read_text() == export.export(notebook)
    assert f"wrote {written} from {notebook}" in capsys.readouterr().out
    clone = tmp_path / "workspace" / "my-endpoint"  # a clone: its root holds .git
    (clone / ".git").mkdir(parents=True)
    (clone / "notebooks" / "recipes").mkdir(parents=True)
    recipe = make_notebook(clone / "notebooks" / "recipes" / "r.ipynb", (GOOD_HANDLER, ["export"]))
    assert export.export_notebook(recipe) == clone / "build" / "handler.py"


def test_export_notebook_in_both_mode_installs_for_the_worker(tmp_path, monkeypatch, capsys):
    notebook = project_with_notebook(tmp_path / "workspace")
    served = tmp_path / "app" / "handler.py"
    monkeypatch.setenv("MODE_TO_RUN", "both")
    monkeypatch.setenv("HANDLER_PATH", str(served))
    written = export.export_notebook(notebook)
    assert served.read_text() == written.read_text()
    assert f"installed at {served}" in capsys.readouterr().out
    assert not list(served.parent.glob(".*.tmp")), "no temporary file is left behind"


def test_export_notebook_checks_as_make_export_handler_does(tmp_path, monkeypatch):
    monkeypatch.setenv("MODE_TO_RUN", "both")
    served = tmp_path / "app" / "handler.py"
    monkeypatch.setenv("HANDLER_PATH", str(served))
    notebook = make_notebook(tmp_path / "nb.ipynb", ("%time 1\n" + GOOD_HANDLER, ["export"]))
    with pytest.raises(export.ExportError, match="IPython magic"):
        export.export_notebook(notebook)
    assert not served.exists() and not (tmp_path / "build").exists(), "nothing written"


def test_export_notebook_outside_jupyter_asks_for_the_path(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    with pytest.raises(export.ExportError, match=r"pass its path, export_notebook\("):
        export.export_notebook()
