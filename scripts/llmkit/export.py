"""Export the notebook's `export`-tagged cells into handler.py, with nbconvert.

    python -m llmkit.export notebooks/handler_dev.ipynb -o build/handler.py [--check]

A cell is exported when it is marked `export`: its first line `#| export`, or the cell
tag (markers.py; the vocabulary is closed, so `#| exprot` is an error). An exported cell
must be plain Python: no IPython magics, shell escapes or `obj?`, no syntax errors, no
undefined names; its marker lines are left out. Together the cells must define an async
generator `handler(job)`, which the template's footer hands to the kit's runtime. Every
problem names the notebook, the cell and the line.

The output is deterministic (no execution counts, no timestamps), so `--check`
can compare it byte for byte with the committed file. It replaces the file whole, so a
worker that reloads its handler.py never reads it half-written.

From inside Jupyter, `export_notebook()` does the same for the notebook it runs in.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert.exporters import TemplateExporter
from nbconvert.preprocessors import Preprocessor

from llmkit import markers
from llmkit.paths import REPO_ROOT
from llmkit.runtime import kit_settings
from llmkit.runtime.versions import API_VERSION

EXPORT_TAG = "export"
TEMPLATE_DIR = REPO_ROOT / "handler_template"
TEMPLATE_FILE = "handler.py.j2"
# Names the template's footer uses; the exported cells must define them.
FOOTER_NAMES = ("handler",)
FOOTER_MARKER = "# %% worker start-up"  # every footer section's first line starts so
_CELL_MARKER = re.compile(r"^# %% cell (\d+) \(id (.+)\)$")


@dataclass(frozen=True)
class Problem:
    notebook: str
    message: str
    cell_index: int | None = None
    cell_id: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.notebook
        if self.cell_index is not None:
            where += f": cell {self.cell_index} (id {self.cell_id})"
        if self.line is not None:
            where += f", line {self.line}"
        return f"{where}: {self.message}"


class ExportError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


class KeepExportCells(Preprocessor):
    """Keep only the code cells marked `export`, without their marker lines; refuse tags
    and markers outside the vocabulary."""

    def preprocess(self, nb, resources):
        problems, kept = resources["problems"], []
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            found, unknown, _ = markers.read(cell)
            problems.extend(Problem(resources["source_notebook"], u.message(), index,
                                    cell.get("id"), u.line) for u in unknown)
            if EXPORT_TAG in found:
                cell.metadata["export_index"] = index
                cell.source, skipped = markers.body(cell)
                resources["skipped_lines"][index] = skipped  # so lines keep the cell's numbers
                problems.extend(_check_cell(resources["source_notebook"], cell, skipped))
                kept.append(cell)
        nb.cells = kept
        return nb, resources


def _check_cell(notebook: str, cell, skipped: int) -> list[Problem]:
    """Magics and syntax errors, located in the cell (``skipped``: its marker lines)."""
    from IPython.core.inputtransformer2 import TransformerManager

    index, cid, src = cell.metadata["export_index"], cell.get("id"), cell.source
    here = dict(notebook=notebook, cell_index=index, cell_id=cid)
    # IPython rewrites %magic, !shell, x = !cmd and obj? into get_ipython() calls;
    # any rewrite means the cell is not plain Python. (It also drops leading blank lines,
    # which markers.body has already dropped.)
    transformed = TransformerManager().transform_cell(src)
    if transformed.rstrip() != src.rstrip():
        before, after = src.splitlines(), transformed.splitlines()
        matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
        first = next(op for op in matcher.get_opcodes() if op[0] != "equal")
        line = min(first[1] + 1, len(before))
        return [Problem(**here, line=line + skipped, message=(
            f"IPython magic, shell escape or help syntax in an exported cell: "
            f"{before[line - 1].strip()!r}; exported cells must be plain Python"))]
    try:
        compile(src, f"{notebook} cell {index}", "exec", dont_inherit=True)
    except SyntaxError as err:
        return [Problem(**here, line=(err.lineno or 1) + skipped,
                        message=f"syntax error: {err.msg}")]
    return []


def _locate(rendered: str, notebook: str, file_line: int, skipped: dict) -> dict:
    """Map a line of the rendered file back to its notebook cell (``skipped``: each
    cell's marker lines, which the file leaves out)."""
    lines = rendered.splitlines()
    for i in range(min(file_line, len(lines)) - 1, -1, -1):
        if lines[i].startswith(FOOTER_MARKER):
            return dict(notebook=f"{notebook} (footer of {TEMPLATE_DIR.name}/{TEMPLATE_FILE})",
                        line=file_line - i - 1)
        match = _CELL_MARKER.match(lines[i])
        if match:
            index = int(match[1])
            return dict(notebook=notebook, cell_index=index, cell_id=match[2],
                        line=file_line - i - 1 + skipped.get(index, 0))
    return dict(notebook=notebook, line=file_line)


def _check_file(rendered: str, notebook: str, skipped: dict) -> list[Problem]:
    """Undefined names (pyflakes) and the handler contract, on the whole file."""
    from pyflakes import checker, messages

    tree = ast.parse(rendered)
    problems = []
    undefined = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)
    for msg in checker.Checker(tree, filename="handler.py").messages:
        if isinstance(msg, undefined):
            text = msg.message % msg.message_args
            footer_hint = ""
            if msg.message_args and msg.message_args[0] in FOOTER_NAMES:
                footer_hint = " (the generated footer uses it: define it in an exported cell)"
            problems.append(Problem(**_locate(rendered, notebook, msg.lineno, skipped),
                                    message=text + footer_hint))
    if problems:
        return problems

    handler = next((n for n in tree.body if getattr(n, "name", None) == "handler"), None)
    if handler is None:
        return [Problem(notebook, "no exported cell defines `async def handler(job)`; "
                        "start the cell that defines it with the line '#| export'")]
    is_generator = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _own_nodes(handler))
    if not isinstance(handler, ast.AsyncFunctionDef) or not is_generator:
        return [Problem(**_locate(rendered, notebook, handler.lineno, skipped), message=(
            "`handler` must be an async generator (`async def handler(job):` that yields "
            "chunks), so the worker can stream and run jobs concurrently"))]
    return []


def _own_nodes(func):
    """Nodes of a function body, not descending into nested functions."""
    stack = list(func.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def display_path(path: Path) -> str:
    """Path as shown in messages and the header: relative to its project, so that every
    clone, and an export from inside Jupyter or from `make`, write the same file."""
    return path.resolve().relative_to(project_root(path)).as_posix()


def project_root(notebook: Path) -> Path:
    """The clone the notebook is in (nearest folder with .git), else the folder above its
    `notebooks/` folder (a pod's /workspace, the image's kit), else its own folder."""
    folders = notebook.resolve().parents
    return next((f for f in folders if (f / ".git").exists()), None) \
        or next((f.parent for f in folders if f.name == "notebooks"), folders[0])


def export(notebook: Path) -> str:
    """Return the text of handler.py for ``notebook``; raise ExportError on any problem."""
    notebook = Path(notebook)
    shown = display_path(notebook)
    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError) as err:
        raise ExportError([Problem(shown, f"cannot read notebook: {err}")]) from err
    exporter = TemplateExporter(extra_template_paths=[str(TEMPLATE_DIR)],
                                template_file=TEMPLATE_FILE)
    exporter.register_preprocessor(KeepExportCells(), enabled=True)
    resources = {"problems": [], "source_notebook": shown, "runtime_api": API_VERSION,
                 "skipped_lines": {}}
    rendered, resources = exporter.from_notebook_node(nb, resources=resources)
    problems = resources["problems"]
    if not resources["skipped_lines"] and not problems:
        problems.append(Problem(shown, "no code cell is marked export: start the handler's "
                                "cells with the line '#| export'"))
    if not problems:
        problems.extend(_check_file(rendered, shown, resources["skipped_lines"]))
    if problems:
        raise ExportError(problems)
    return rendered.rstrip("\n") + "\n"


def write(path: Path, text: str) -> None:
    """Replace ``path`` whole: a temporary file beside it, renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def export_notebook(notebook: str | Path | None = None,
                    output: str | Path | None = None) -> Path:
    """Export from inside Jupyter, with the same checks as `make export-handler`.

    ``notebook``: this notebook (Jupyter tells the kernel its path), else a path. It reads
    the saved file: save first. ``output``: default build/handler.py in the notebook's
    project. In MODE_TO_RUN=both the result is also installed at HANDLER_PATH, which the
    worker beside Jupyter serves within seconds (HANDLER_RELOAD). Returns ``output``.
    """
    notebook = notebook or os.environ.get("JPY_SESSION_NAME")
    if not notebook or not str(notebook).endswith(".ipynb"):
        raise ExportError([Problem("(this kernel)", "no notebook to export: Jupyter did not "
                                   "name this kernel's notebook; pass its path, "
                                   "export_notebook('handler_dev.ipynb')")])
    notebook = Path(notebook)
    if not notebook.is_absolute() and not notebook.exists():  # a path under Jupyter's root
        notebook = Path.cwd() / notebook.name  # the kernel runs in the notebook's folder
    output = Path(output) if output else project_root(notebook) / "build" / "handler.py"
    text = export(notebook)
    write(output, text)
    saved = time.strftime("%H:%M:%S", time.localtime(notebook.stat().st_mtime))
    print(f"wrote {output} from {notebook} (saved at {saved})")
    target = os.environ.get("HANDLER_PATH", "")
    if kit_settings.get("mode_to_run") == "both" and target \
            and Path(target).resolve() != output.resolve():
        write(Path(target), text)
        print(f"installed at {target}: the worker serves it within seconds")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; fail if OUTPUT differs from a fresh export")
    args = parser.parse_args(argv)
    try:
        text = export(args.notebook)
    except ExportError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(),
                                        str(args.output), "fresh export", lineterm="", n=1)
            print("\n".join(list(diff)[:40]), file=sys.stderr)
            print(f"error: {args.output} is out of date with {args.notebook}: "
                  "run `make export-handler` and commit the result", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date with {args.notebook}")
        return 0
    write(args.output, text)
    print(f"wrote {args.output} from {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
