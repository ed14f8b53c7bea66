"""`make test-handler`: the notebook's own tests, run as Run All runs them.

    python -m llmkit.handler_tests notebooks/handler_dev.ipynb [-p max_model_len 1024]

First the handler must export (the exporter's checks). Then papermill runs the whole
notebook, top to bottom, in a fresh kernel on MODEL (else the embedded default model), with
any `-p NAME VALUE` injected as papermill injects parameters. The cells marked `#| test` are
the tests; the run stops at the first cell that fails, whichever it is, and says which: the
notebook, the cell (its index and id, as Jupyter shows them), the line, and what was
expected (the notebook's setup() makes a failing assert say what it got). The executed
notebook, outputs and all, is left in build/ to open.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat

from llmkit import export, markers
from llmkit.export import Problem

KIT_KERNEL = "runpod-llm-kit"  # `make install`'s kernel, bound to the kit's environment
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CELL_LINE = re.compile(r"Cell In\[\d+\], line (\d+)")


def kernel_name() -> str:
    """The kit's kernel where it is installed, else the default one, which jupyter_client
    starts with this very interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KIT_KERNEL if KIT_KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def test_cells(nb) -> list[int]:
    """Indexes of the code cells marked `test`."""
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and "test" in markers.read(c)[0]]


def tagged(nb):
    """A copy of ``nb`` whose cells carry their markers as tags too: papermill reads only
    tags (the `parameters` cell)."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            found = markers.read(cell)[0]
            cell.metadata["tags"] = sorted(set(cell.metadata.get("tags", [])) | found)
    return nb


def title(cell) -> str:
    """What a test cell checks: its opening comment, else its first line of code."""
    lines = markers.body(cell)[0].splitlines()
    comment = []
    for line in lines:
        if not line.lstrip().startswith("#"):
            break
        comment.append(line.strip().lstrip("# "))
    return " ".join(comment) or (lines[0].strip() if lines else "")


def first_failure(executed, original, shown: str) -> Problem:
    """The cell that failed in papermill's ``executed`` notebook, located in the
    ``original`` one (papermill adds cells, so indexes differ; ids do not)."""
    index_of = {c.get("id"): i for i, c in enumerate(original.cells)}
    for cell in executed.cells:
        error = next((o for o in cell.get("outputs", []) if o.output_type == "error"), None)
        if error is None:
            continue
        trace = _ANSI.sub("", "\n".join(error.get("traceback", [])))
        line = _CELL_LINE.search(trace)
        # The kit's own errors (a missing model, a bad setting) come without a traceback.
        what = f"{error.ename}: {error.evalue}" if error.evalue else error.ename
        return Problem(shown, what, index_of.get(cell.get("id")), cell.get("id"),
                       int(line[1]) if line else None)
    return Problem(shown, "the run failed before any cell did (see the kernel's output above)")


def run(notebook: Path, output: Path, parameters: dict, timeout: int = 900) -> list[Problem]:
    """Export-check and run ``notebook``; the problems found (none: its tests passed)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    shown = export.display_path(notebook)
    try:
        original = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError) as err:
        return [Problem(shown, f"cannot read notebook: {err}")]
    if any("export" in markers.read(c)[0] for c in original.cells if c.cell_type == "code"):
        try:
            export.export(notebook)
        except export.ExportError as err:
            return err.problems
    tests = test_cells(original)
    if not tests:
        return [Problem(shown, "no cell is marked test: start each test cell with the line "
                               "'#| test'")]
    print(f"{shown}: running its {len(original.cells)} cells in a fresh kernel; "
          f"{len(tests)} of them are tests", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the kernel's: the run's own lines
    started = time.monotonic()
    try:
        papermill.execute_notebook(tagged(original), str(output), parameters=parameters,
                                   kernel_name=kernel_name(), cwd=str(notebook.parent),
                                   progress_bar=True, execution_timeout=timeout)
    except PapermillExecutionError:
        return [first_failure(nbformat.read(output, as_version=4), original, shown)]
    executed = {c.get("id"): c for c in nbformat.read(output, as_version=4).cells}
    for index in tests:
        cell = original.cells[index]
        took = executed[cell.get("id")].metadata.get("papermill", {}).get("duration") or 0
        print(f"  ok  cell {index} (id {cell.get('id')}), {took:.1f} s: {title(cell)}")
    took = time.monotonic() - started
    print(f"{shown}: {len(tests)} test{'s' * (len(tests) != 1)} passed in {took:.0f} s "
          f"(executed notebook: {output})")
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.handler_tests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="a papermill parameter (a string)")
    parser.add_argument("-o", "--output", type=Path,
                        help="the executed notebook (default build/<name>.tested.ipynb)")
    args = parser.parse_args(argv)
    notebook = args.notebook.resolve()
    output = args.output or \
        export.project_root(notebook) / "build" / f"{notebook.stem}.tested.ipynb"
    problems = run(notebook, output, dict(args.parameter))
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
