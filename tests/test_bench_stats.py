"""The benchmarks' statistics and tables (bench/stats.py): pure functions."""

from __future__ import annotations

import sys

import pytest

from llmkit.paths import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import stats  # noqa: E402


def test_median_and_percentiles_skip_missing_values():
    assert stats.median([3, None, 1, 2]) == 2
    assert stats.median([None]) is None
    assert stats.pct([None], 50) is None
    xs = [4, 1, 3, 2, None]
    assert stats.pct(xs, 0) == 1 and stats.pct(xs, 100) == 4
    assert stats.pct(xs, 50) == pytest.approx(2.5)
    assert stats.pct(xs, 95) == pytest.approx(3.85)  # linear between 3 and 4
    assert stats.pct([7], 95) == 7


def test_fmt_keeps_ints_and_strings_and_rounds_floats():
    assert stats.fmt(None) == "-"
    assert stats.fmt("n/a") == "n/a"
    assert stats.fmt(12) == "12"
    assert stats.fmt(True) == "1.0"  # a bool is not a count
    assert stats.fmt(1.25, 1) == "1.2" and stats.fmt(0.5, 3) == "0.500"


def test_table_is_markdown_with_aligned_columns():
    text = stats.table(["path", "tok/s"], [["raw", 101.26], ["handler", None]])
    assert text.splitlines() == [
        "| path    | tok/s |",
        "|---------|-------|",
        "| raw     | 101.3 |",
        "| handler | -     |",
    ]


def test_ratio_verdicts_and_lines():
    passed = stats.ratio("a/b", 0.95, 0.90)
    failed = stats.ratio("a/b", 0.85, 0.90, note="noisy")
    info, missing = stats.ratio("c", 1.2, None), stats.ratio("d", None, 0.9)
    assert [r["verdict"] for r in (passed, failed, info, missing)] == \
        ["PASS", "FAIL", "info", "n/a"]
    assert stats.ratio_lines([failed, info, missing]).splitlines() == [
        "ratio a/b = 0.850 (target >= 0.90) FAIL  [noisy]",
        "ratio c = 1.200 info",
        "ratio d = n/a (target >= 0.90) n/a",
    ]
