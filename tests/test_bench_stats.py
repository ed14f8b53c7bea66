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


def test_a_maximum_target_passes_at_or_below_it():
    assert stats.ratio("wait ms", 50, 50, at_most=True)["verdict"] == "PASS"
    assert stats.ratio("wait ms", 51, 50, at_most=True)["verdict"] == "FAIL"
    assert "(target <= 50.00) PASS" in stats.ratio_lines([stats.ratio("w", 3, 50, at_most=True)])


def test_slot_waits_count_from_a_free_slot_or_the_jobs_arrival():
    from bench.worker_loop import slot_waits

    jobs = [dict(submitted=0.0, taken=0.01, done=1.0),   # a free slot: waits for the take
            dict(submitted=0.0, taken=1.02, done=2.0),   # queued: from the slot freeing
            dict(submitted=2.5, taken=2.6, done=3.0)]    # came after the slot freed
    assert [round(w, 3) for w in slot_waits(jobs, 1)] == [0.01, 0.02, 0.1]
    # two slots: the third job takes the slot the first one freed
    two = [dict(submitted=0.0, taken=0.0, done=1.0), dict(submitted=0.0, taken=0.0, done=3.0),
           dict(submitted=0.0, taken=1.5, done=2.0)]
    assert [round(w, 3) for w in slot_waits(two, 2)] == [0.0, 0.0, 0.5]


def test_slot_waits_survive_a_take_stamped_just_before_the_end_that_freed_its_slot():
    """Times rebuilt from whole-ms delayTime/executionTime: the take of the job that
    got the freed slot can sort 2 ms before that end. No wait may grow to a job's
    length (1 s here) because of it."""
    from bench.worker_loop import slot_waits

    jobs = [dict(submitted=0.0, taken=0.0, done=1.0),
            dict(submitted=0.0, taken=0.998, done=2.0),   # 2 ms "before" the slot freed
            dict(submitted=0.0, taken=2.01, done=3.0),
            dict(submitted=0.0, taken=3.005, done=4.0)]
    assert [round(w, 3) for w in slot_waits(jobs, 1)] == [0.0, 0.0, 0.01, 0.005]


def test_sse_reads_counts_an_event_when_its_end_arrives():
    import asyncio
    from types import SimpleNamespace

    from bench import workload

    async def reads():
        for data in [b"data: 1\n\ndata: ", b"2", b"\n\ndata: 3\n\n", b""]:
            yield data

    response = SimpleNamespace(content=SimpleNamespace(iter_any=reads))

    async def collect():
        return [events async for _, events in workload.sse_reads(response)]

    assert asyncio.run(collect()) == [[b"data: 1"], [], [b"data: 2", b"data: 3"], []]


def test_rounds_by_clients_interleave_each_variant_and_rows_take_medians():
    import asyncio

    from bench import workload

    calls = []

    def runner(variant):
        async def job(i):
            calls.append((variant, i))
            st = workload.JobStats(start=workload.now())
            st.first = st.end = st.start + 0.001
            st.tokens, st.chunks = 4, 2
            return st
        return job

    rounds = asyncio.run(workload.rounds_by_clients(runner, ["a", "b"], [1, 2], 2))
    assert sorted(rounds) == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    assert all(len(rs) == 2 for rs in rounds.values())
    assert [len(r.jobs) for r in rounds[1, "a"]] == [3, 3]  # 3 jobs per client at 1 client
    assert [len(r.jobs) for r in rounds[2, "b"]] == [4, 4]  # else 2 per client
    assert [v for v, _ in calls[:6]] == ["a"] * 3 + ["b"] * 3  # interleaved: a, b, b, a
    rows = workload.round_rows(rounds)
    assert rows["2 client(s): b"]["jobs"] == 8 and rows["1 client(s): a"]["chunks"] == 2
    assert rows["1 client(s): a"]["ttft_ms"] < 1000


def test_first_text_timeline_lines_up_a_workers_trace_with_the_clients_jobs(tmp_path):
    from bench import first_text
    from bench.workload import JobStats

    log = tmp_path / "worker.log"
    log.write_text("\n".join([
        "[worker-1] old line before the mark",
        "[worker-1] loop-trace 100.0200 fetch 16",
        "[worker-1] loop-trace 100.0300 fetched a,b",
        "[worker-1] some vLLM warning without a newline[worker-1] loop-trace 100.0400 started a",
        "[worker-1] loop-trace 100.0450 started b",
        "[worker-1] loop-trace 100.0500 engine-in a",
        "[worker-1] loop-trace 100.0600 engine-in b",
        "[worker-1] loop-trace 100.5000 engine-out a",
        "[worker-1] loop-trace 100.5000 first-text a",
        "[worker-1] loop-trace 100.5010 post a",
        "[worker-1] loop-trace 100.5100 posted a",
        "[worker-1] loop-trace 100.6000 post a",  # a later post: not the first
        "[worker-1] loop-trace 100.7000 engine-out b",
    ]) + "\n")
    mark = len("[worker-1] old line before the mark\n")

    def job(job_id, first_after):
        j = JobStats(start=0.0, first=first_after, job_id=job_id)
        j.wall_start = 100.0
        return j

    rounds = [(1.0, [job("a", 0.52), job("b", 0.8)])]
    t = first_text.timeline_of(log, mark, rounds)
    assert t["streams"] == 2 and t["takes"] == 1
    assert [round(x * 1e3) for x in t["at_s"]["fetched"]] == [30, 30]
    assert [round(x * 1e3) for x in t["at_s"]["post"]] == [501]  # b never posted
    merged = first_text.merge([t, t])
    assert merged["jobs"] == 4 and merged["rounds"] == 2 and merged["takes"] == 2
    assert merged["steps_ms"]["engine-in"] == pytest.approx(55)
    assert merged["max_ms"]["client"] == pytest.approx(800)
