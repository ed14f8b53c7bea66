"""Statistics and printing for the benchmarks: pure functions, no I/O."""

from __future__ import annotations

import statistics


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, q: float):
    """The q-th percentile (0-100), linear interpolation."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}f}"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r]
                                          for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def ratio(name: str, value: float | None, target: float | None, note: str = "",
          at_most: bool = False) -> dict:
    """A figure with its target (a minimum, or a maximum if at_most); None: reported only."""
    if value is None:
        verdict = "n/a"
    elif target is None:
        verdict = "info"
    else:
        verdict = "PASS" if (value <= target if at_most else value >= target) else "FAIL"
    return {"name": name, "value": value, "target": target, "verdict": verdict, "note": note,
            "at_most": at_most}


def ratio_lines(ratios: list[dict]) -> str:
    out = []
    for r in ratios:
        sign = "<=" if r.get("at_most") else ">="
        target = f" (target {sign} {r['target']:.2f})" if r["target"] is not None else ""
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        note = f"  [{r['note']}]" if r["note"] else ""
        out.append(f"ratio {r['name']} = {value}{target} {r['verdict']}{note}")
    return "\n".join(out)
