"""`make soak`: many jobs through the local endpoint to real workers; nothing may be lost.

    python -m llmkit.soak [--jobs 1000] [--concurrency 32] [--workers 2] [--model SPEC]

It starts ``python -m llmkit.endpoint`` with N real workers (vLLM, the exported
handler), then C client tasks submit jobs with ``/run`` and poll ``/status`` until
each ends. A tenth of the jobs carry bad input and must fail. While it runs, it
samples the resident memory of each worker (with its vLLM engine processes).

At the end it checks: every job reached a final state, good jobs COMPLETED and bad
ones FAILED with the handler's message, no job was handed to a worker twice, and
``/health`` counts match what the clients saw. It prints the figures, and exits
non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import psutil

from llmkit import models
from llmkit.paths import REPO_ROOT

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
BAD_INPUT = {"prompt": "", "answerType": "normal"}
BAD_MESSAGE = "input.prompt must not be empty"


def good_input(i: int, tokens: int) -> dict:
    return {"prompt": f"soak job {i}: tell me something", "answerType":
            "stream" if i % 2 else "normal",
            "sampling_params": {"max_tokens": tokens, "min_tokens": tokens, "seed": i}}


class EndpointProcess:
    """``python -m llmkit.endpoint`` in its own session, with its log in a file."""

    def __init__(self, workers: int, concurrency: int, model: Path, handler: Path,
                 log_path: Path, max_model_len: int = 512) -> None:
        self.key, self.endpoint_id, self.log_path = "soak-key", "soak", log_path
        env = {**os.environ, "MAX_MODEL_LEN": str(max_model_len), "HF_HUB_OFFLINE": "1"}
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmkit.endpoint", "--port", "0", "--api-key", self.key,
             "--endpoint-id", self.endpoint_id, "--workers", str(workers),
             "--concurrency", str(concurrency), "--model", str(model), "--handler",
             str(handler)], cwd=REPO_ROOT, env=env, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        base = self._wait_for(r"base url: (\S+)", 60).group(1)
        self.url = f"{base}/{self.endpoint_id}"
        self.headers = {"Authorization": f"Bearer {self.key}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.log())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"endpoint never logged {pattern!r}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        return match

    def worker_pids(self) -> list[int]:
        """The worker processes: the endpoint's direct children."""
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


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


class MemorySampler(threading.Thread):
    """Every ``interval`` s, the summed RSS of all workers."""

    def __init__(self, endpoint: EndpointProcess, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.interval = endpoint, interval
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.wait(self.interval):
            rss = sum(family_rss_mb(pid) for pid in self.endpoint.worker_pids())
            self.samples.append((time.monotonic() - start, rss))

    def stop(self) -> None:
        self._halt.set()
        self.join()


async def wait_ready(session, endpoint: EndpointProcess, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(f"{endpoint.url}/health") as reply:
            health = await reply.json()
        if health["workers"]["idle"] + health["workers"]["running"] >= workers:
            return
        # A worker that dies before its first job is not restarted: stop waiting.
        given_up = "before it took any job; not restarting" in endpoint.log()
        if time.monotonic() > deadline or endpoint.proc.poll() is not None or given_up:
            raise RuntimeError(f"workers not ready:\n{endpoint.log()[-3000:]}")
        await asyncio.sleep(1)


async def report_progress(results: dict, jobs: int, every: float = 5.0) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(every)
        done = len(results)
        print(f"  {done}/{jobs} jobs done, {time.monotonic() - started:.0f} s", flush=True)


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


def check(run: dict, jobs: int, log: str) -> list[str]:
    """Every invariant the soak promises; returns the violations."""
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
    if "late result" in log:
        problems.append("a worker posted a result for a job it no longer held")
    counts = run["health"]["jobs"]
    bad = sum(r["bad"] for r in results.values())
    expected = {"completed": len(results) - bad, "failed": bad, "inProgress": 0, "inQueue": 0}
    seen = {k: counts.get(k) for k in expected}
    if seen != expected:
        problems.append(f"/health jobs {seen} do not match what the clients saw {expected}")
    return problems


def memory_figures(samples: list[tuple[float, float]]) -> dict:
    """RSS at the start and end of the run, and the growth between them."""
    rss = [mb for _, mb in samples if mb > 0]
    if len(rss) < 8:
        return {"samples": len(rss)}
    quarter = max(len(rss) // 4, 1)
    first, last = statistics.median(rss[:quarter]), statistics.median(rss[-quarter:])
    return {"samples": len(rss), "first_quarter_mb": round(first, 1),
            "last_quarter_mb": round(last, 1), "peak_mb": round(max(rss), 1),
            "growth_mb": round(last - first, 1), "growth_ratio": round(last / first, 3)}


def run_load(endpoint: EndpointProcess, jobs: int, concurrency: int, tokens: int = 8,
             bad_every: int = 10, progress: bool = False) -> dict:
    """Drive a ready endpoint; return a report with figures and the list of problems."""
    sampler = MemorySampler(endpoint)
    sampler.start()
    try:
        run = asyncio.run(drive(endpoint, jobs, concurrency, tokens, bad_every, progress))
    finally:
        sampler.stop()
    problems = check(run, jobs, endpoint.log())
    latencies = sorted(r["latency_s"] for r in run["results"].values())
    return {
        "jobs": jobs, "concurrency": concurrency, "tokens_per_job": tokens,
        "elapsed_s": round(run["elapsed_s"], 1),
        "jobs_per_s": round(len(latencies) / run["elapsed_s"], 2),
        "latency_p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "latency_p95_s": round(latencies[int(len(latencies) * 0.95)], 3) if latencies else None,
        "statuses": dict(Counter(r["status"] for r in run["results"].values())),
        "health": run["health"], "memory": memory_figures(sampler.samples),
        "memory_samples": sampler.samples, "problems": problems,
    }


def start_endpoint(workers: int, worker_concurrency: int, model: str | None = None,
                   handler: Path | None = None, log_dir: Path | None = None,
                   max_model_len: int = 512) -> EndpointProcess:
    """An endpoint with ``workers`` real workers, once they all poll for jobs."""
    model_dir = models.resolve(model)
    handler = Path(handler or REPO_ROOT / "build" / "handler.py")
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="soak-"))
    endpoint = EndpointProcess(workers, worker_concurrency, model_dir, handler,
                               log_dir / "endpoint.log", max_model_len)

    async def ready():
        async with aiohttp.ClientSession(headers=endpoint.headers) as session:
            await wait_ready(session, endpoint, workers, timeout=600)

    try:
        asyncio.run(ready())
    except BaseException:
        endpoint.stop()
        raise
    return endpoint


def soak(jobs: int = 1000, concurrency: int = 32, workers: int = 2, tokens: int = 8,
         model: str | None = None) -> dict:
    endpoint = start_endpoint(workers, max(concurrency // workers, 1), model)
    try:
        report = run_load(endpoint, jobs, concurrency, tokens, progress=True)
    finally:
        code = endpoint.stop()
    if code != 0:
        report["problems"].append(f"the endpoint exited {code} on SIGTERM")
    report.update(workers=workers, model=str(models.resolve(model)),
                  log=str(endpoint.log_path))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32, help="client tasks at once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=8, help="tokens each good job generates")
    parser.add_argument("--model", default=None, help="default: $MODEL or the embedded model")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    print(f"soak: {args.jobs} jobs, {args.concurrency} at once, {args.workers} worker(s); "
          "starting workers (about a minute each on a CPU)...", flush=True)
    report = soak(args.jobs, args.concurrency, args.workers, args.tokens, model=args.model)
    shown = {k: v for k, v in report.items() if k != "memory_samples"}
    print(json.dumps(shown, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    for problem in report["problems"]:
        print(f"FAIL: {problem}", file=sys.stderr)
    print("soak:", "PASS" if not report["problems"] else "FAIL")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
