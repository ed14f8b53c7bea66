"""The soak's verdict (llmkit.load), on made-up runs: no endpoint, no engine."""

from __future__ import annotations

from llmkit import load


def _run(jobs: int = 20) -> tuple[dict, str]:
    """A run in which every job ended as it should, and the log that goes with it."""
    results = {}
    for i in range(jobs):
        bad = i % 10 == 0
        results[i] = {"id": f"job-{i}", "bad": bad, "status": "FAILED" if bad else "COMPLETED",
                      "error": load.BAD_MESSAGE if bad else None,
                      "output": None if bad else [{"text": "hi"}], "latency_s": 0.1}
    health = {"jobs": {"completed": jobs - 2, "failed": 2, "inProgress": 0, "inQueue": 0}}
    log = "\n".join(f"job job-{i} -> worker-1 (waited 0.0 s)" for i in range(jobs))
    log += "".join(f'\n[worker-1] {{"requestId": "job-{i}", "message": "failed on its input: '
                   f'{load.BAD_MESSAGE}", "level": "INFO"}}' for i in range(0, jobs, 10))
    return {"results": results, "elapsed_s": 1.0, "health": health}, log


def _samples(start_mb: float, end_mb: float, n: int = 40) -> list[tuple[float, float]]:
    return [(t, start_mb + (end_mb - start_mb) * t / (n - 1)) for t in range(n)]


def test_a_clean_run_with_level_memory_passes():
    run, log = _run()
    memory = load.memory_figures(_samples(1000, 1050))
    assert memory["levels_off"] is True
    assert load.check(run, 20, log, memory) == []


def test_memory_that_keeps_growing_fails_the_soak():
    run, log = _run()
    memory = load.memory_figures(_samples(1000, 2000))
    assert memory["levels_off"] is False
    problems = load.check(run, 20, log, memory)
    assert len(problems) == 1 and problems[0].startswith("worker memory did not level off")


def test_too_few_memory_samples_give_no_verdict():
    run, log = _run()
    memory = load.memory_figures(_samples(1000, 5000, n=5))
    assert memory == {"samples": 5, "levels_off": None}
    assert load.check(run, 20, log, memory) == []


def test_a_job_handed_out_twice_or_lost_is_reported():
    run, log = _run()
    log += "\njob job-3 -> worker-2 (waited 0.0 s)"
    del run["results"][5]
    problems = load.check(run, 20, log, load.memory_figures([]))
    assert "1 job(s) never came back to their client" in problems
    assert "1 job(s) handed to a worker more than once: ['job-3']" in problems


def test_a_failed_job_the_workers_did_not_log_with_its_id_is_reported():
    """An operator looks a failed job up by its id: the kit logs why (runtime/jobs.py)."""
    run, log = _run()
    log = log.replace('"requestId": "job-10"', '"requestId": null')
    problems = load.check(run, 20, log, load.memory_figures([]))
    assert problems == ["1 failed job(s) have no log line with their id and why: ['job-10']"]
