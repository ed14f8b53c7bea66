"""Load through a running local endpoint: many clients, every job followed to its end,
the workers' memory sampled, and every promise checked. ``llmkit.soak`` is its command.

C client tasks submit jobs with ``/run`` and poll ``/status`` until each ends. A tenth
of the jobs carry bad input and must fail with the handler's message. Meanwhile the
resident memory of each worker (with its vLLM engine processes) is sampled.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time
from collections import Counter

import aiohttp
import psutil

from llmkit.endpoint.harness import EndpointProcess
from llmkit.endpoint.jobs import FINAL
from llmkit.job_inputs import exact_tokens

BAD_INPUT = {"prompt": "", "answerType": "normal"}
BAD_MESSAGE = "input.prompt must not be empty"
# Memory levels off when the last quarter of the run is within 15% (+100 MB) of the
# first quarter; fewer samples than this cannot tell.
MEMORY_GROWTH_RATIO, MEMORY_SLACK_MB, MEMORY_MIN_SAMPLES = 1.15, 100, 8


def good_input(i: int, tokens: int) -> dict:
    return exact_tokens(tokens, f"soak job {i}: tell me something", stream=bool(i % 2), seed=i)


def family_rss_mb(pid: int) -> float:
    """Resident memory of a worker and its children (vLLM's engine core), in MB."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def worker_pids(endpoint: EndpointProcess) -> list[int]:
    """The worker processes: the endpoint's direct children."""
    try:
        return [p.pid for p in psutil.Process(endpoint.pid).children()]
    except psutil.NoSuchProcess:
        return []


class MemorySampler(threading.Thread):
    """Every ``interval`` s, the summed RSS of all workers."""

    # 4 a second: a 1000-job run can take under 10 s, and MEMORY_MIN_SAMPLES must fit.
    def __init__(self, endpoint: EndpointProcess, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.interval = endpoint, interval
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.wait(self.interval):
            rss = sum(family_rss_mb(pid) for pid in worker_pids(self.endpoint))
            self.samples.append((time.monotonic() - start, rss))

    def stop(self) -> None:
        self._halt.set()
        self.join()


async def report_progress(results: dict, jobs: int, every: float = 5.0) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(every)
        print(f"  {len(results)}/{jobs} jobs done, {time.monotonic() - started:.0f} s",
              flush=True)


async def drive(endpoint: EndpointProcess, jobs: int, concurrency: int, tokens: int,
                bad_every: int, progress: bool = False) -> dict:
    """Submit ``jobs`` jobs from ``concurrency`` clients; return what each one saw."""
    results: dict[int, dict] = {}
    todo = iter(range(jobs))
    timeout = aiohttp.ClientTimeout(total=120)

    async def client(session) -> None:
        for i in todo:
            bad = bad_every and i % bad_every == 0
            body = {"input": BAD_INPUT if bad else good_input(i, tokens)}
            started = time.monotonic()
            async with session.post(f"{endpoint.url}/run", json=body) as reply:
                reply.raise_for_status()
                job_id = (await reply.json())["id"]
            while True:
                async with session.get(f"{endpoint.url}/status/{job_id}") as reply:
                    state = await reply.json()
                if state["status"] in FINAL:
                    break
                await asyncio.sleep(0.05)
            results[i] = {"id": job_id, "bad": bool(bad), "status": state["status"],
                          "error": state.get("error"), "output": state.get("output"),
                          "latency_s": time.monotonic() - started}

    async with aiohttp.ClientSession(headers=endpoint.headers, timeout=timeout) as session:
        started = time.monotonic()
        reporter = asyncio.create_task(report_progress(results, jobs)) if progress else None
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        if reporter is not None:
            reporter.cancel()
        async with session.get(f"{endpoint.url}/health") as reply:
            health = await reply.json()
    return {"results": results, "elapsed_s": elapsed, "health": health}


def _is_answer(output, stream: bool) -> bool:
    """A list of {"text": str} chunks: exactly one in normal mode. (The text may be empty:
    a random test model's few tokens can decode to nothing.)"""
    if not isinstance(output, list) or (not stream and len(output) != 1):
        return False
    return all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in output)


def memory_figures(samples: list[tuple[float, float]]) -> dict:
    """RSS at the start and end of the run, the growth between them, and whether it
    levels off (None: too few samples to tell)."""
    rss = [mb for _, mb in samples if mb > 0]
    if len(rss) < MEMORY_MIN_SAMPLES:
        return {"samples": len(rss), "levels_off": None}
    quarter = max(len(rss) // 4, 1)
    first, last = statistics.median(rss[:quarter]), statistics.median(rss[-quarter:])
    return {"samples": len(rss), "first_quarter_mb": round(first, 1),
            "last_quarter_mb": round(last, 1), "peak_mb": round(max(rss), 1),
            "growth_mb": round(last - first, 1), "growth_ratio": round(last / first, 3),
            "levels_off": last <= first * MEMORY_GROWTH_RATIO + MEMORY_SLACK_MB}


def check(run: dict, jobs: int, log: str, memory: dict) -> list[str]:
    """Every promise of the soak; returns the violations."""
    problems = []
    results = run["results"]
    if len(results) != jobs:
        problems.append(f"{jobs - len(results)} job(s) never came back to their client")
    ids = [r["id"] for r in results.values()]
    if len(set(ids)) != len(ids):
        problems.append("the endpoint gave two submissions the same job id")
    for i, r in sorted(results.items()):
        want = "FAILED" if r["bad"] else "COMPLETED"
        if r["status"] != want:
            problems.append(f"job {i} ({r['id']}) ended {r['status']}, expected {want}: "
                            f"{r['error']}")
        elif r["bad"] and BAD_MESSAGE not in (r["error"] or ""):
            problems.append(f"job {i} failed without the handler's message: {r['error']}")
        elif not r["bad"] and not _is_answer(r["output"], stream=bool(i % 2)):
            problems.append(f"job {i} completed without its answer: {r['output']!r:.200}")
    # Each job must be handed out exactly once (the endpoint logs every take).
    takes = Counter(re.findall(r"job (\S+) -> ", log))
    twice = [job_id for job_id, n in takes.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} job(s) handed to a worker more than once: {twice[:5]}")
    missing = set(ids) - set(takes)
    if missing:
        problems.append(f"{len(missing)} job(s) never handed to a worker")
    # An operator finds each failed job in the workers' logs: its id, and why (logs.py).
    unlogged = [r["id"] for r in results.values() if r["bad"] and not re.search(
        rf"{re.escape(r['id'])}.*failed on its input: {re.escape(BAD_MESSAGE)}", log)]
    if unlogged:
        problems.append(f"{len(unlogged)} failed job(s) have no log line with their id and "
                        f"why: {unlogged[:3]}")
    if "late result" in log:
        problems.append("a worker posted a result for a job it no longer held")
    counts = run["health"]["jobs"]
    bad = sum(r["bad"] for r in results.values())
    expected = {"completed": len(results) - bad, "failed": bad, "inProgress": 0, "inQueue": 0}
    seen = {k: counts.get(k) for k in expected}
    if seen != expected:
        problems.append(f"/health jobs {seen} do not match what the clients saw {expected}")
    if memory["levels_off"] is False:
        problems.append(f"worker memory did not level off: {memory['first_quarter_mb']} MB "
                        f"in the first quarter of the run, {memory['last_quarter_mb']} MB in "
                        f"the last (allowed: x{MEMORY_GROWTH_RATIO} + {MEMORY_SLACK_MB} MB)")
    return problems


def run_load(endpoint: EndpointProcess, jobs: int, concurrency: int, tokens: int = 8,
             bad_every: int = 10, progress: bool = False) -> dict:
    """Drive an endpoint whose workers are ready; a report with figures and problems."""
    sampler = MemorySampler(endpoint)
    sampler.start()
    try:
        run = asyncio.run(drive(endpoint, jobs, concurrency, tokens, bad_every, progress))
    finally:
        sampler.stop()
    memory = memory_figures(sampler.samples)
    log = endpoint.log_text()
    latencies = sorted(r["latency_s"] for r in run["results"].values())
    return {
        "jobs": jobs, "concurrency": concurrency, "tokens_per_job": tokens,
        "elapsed_s": round(run["elapsed_s"], 1),
        "jobs_per_s": round(len(latencies) / run["elapsed_s"], 2),
        "latency_p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "latency_p95_s": round(latencies[int(len(latencies) * 0.95)], 3) if latencies else None,
        "statuses": dict(Counter(r["status"] for r in run["results"].values())),
        "health": run["health"], "memory": memory, "memory_samples": sampler.samples,
        "problems": check(run, jobs, log, memory),
        # The workers' log lines that name their job (the SDK's and the kit's: logs.py).
        "log_lines_with_job_id": len(re.findall(
            r'^\[worker-\d+\] .*(?:"requestId": "[^"]+"|\| [\w-]{8,} \|)', log, re.M)),
    }
