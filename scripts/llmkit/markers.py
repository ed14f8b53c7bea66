"""A notebook cell's markers: its tags, or `#| name` lines at the top of its text.

nbdev's spelling: `#| export` as a code cell's first line marks it as JupyterLab's cell tag
`export` does. Markers show in VS Code, Colab and a plain diff, where tags do not. Either
works, or both. The vocabulary is closed, so a typo (`#| exprot`) is an error, not a cell
silently left out.

    export       the cell goes into handler.py
    test         one of the notebook's own tests (`make test-handler`)
    parameters   papermill's knobs (papermill reads only the tag: keep the tag too)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKERS = ("export", "test", "parameters")
# papermill tags the cell it injects; it is never written by hand.
KNOWN_TAGS = frozenset({*MARKERS, "injected-parameters"})
_MARKER = re.compile(r"#\|\s*(?P<text>.*?)\s*$")


@dataclass(frozen=True)
class Unknown:
    """A tag or marker outside the vocabulary; ``line`` is None for a tag."""
    name: str
    line: int | None

    def message(self) -> str:
        known = ", ".join(MARKERS)
        if self.line is None:
            return f"unknown tag {self.name!r}; code cells may carry only {known} " \
                   "(or papermill's injected-parameters)"
        return f"unknown marker '#| {self.name}'; a cell may be marked only " + \
            ", ".join(f"'#| {m}'" for m in MARKERS)


def plain_lines(source: str) -> list[str]:
    """The cell's lines as Python reads them: any line ending, no trailing spaces."""
    return [line.rstrip() for line in source.replace("\r\n", "\n").replace("\r", "\n")
            .split("\n")]


def read(cell) -> tuple[set[str], list[Unknown], int]:
    """(markers, unknown ones, lines of the marker block) of a code cell.

    The marker block is the cell's leading blank lines and `#|` lines; nbdev reads markers
    only there, and so does the kit: a `#|` further down is a comment.
    """
    found, unknown, block = set(), [], 0
    for tag in cell.get("metadata", {}).get("tags", []):
        if tag in KNOWN_TAGS:
            found.add(tag)
        else:
            unknown.append(Unknown(tag, None))
    for number, line in enumerate(plain_lines(cell.get("source", "")), 1):
        match = _MARKER.match(line.lstrip())
        if line.strip() and not match:
            break
        block = number
        if match:
            if match["text"] in MARKERS:
                found.add(match["text"])
            else:
                unknown.append(Unknown(match["text"], number))
    return found, unknown, block


def body(cell) -> tuple[str, int]:
    """The cell's code without its marker block, and how many lines that block had."""
    _, _, block = read(cell)
    lines = plain_lines(cell.get("source", ""))[block:]
    return "\n".join(lines).rstrip() + "\n", block
