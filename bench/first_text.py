"""Benchmark 8: first text under load, the kit's worker beside a `vllm serve` proxy worker.

Two workers under the same local endpoint code, each at CONCURRENCY_MODIFIER=16 on the
same engine flags: the kit's (handler.py) and bench/proxy_worker.py, which forwards each
job to `vllm serve` over HTTP as Runpod's official vLLM worker does. One worker runs at a
time (two engines on two cores slow each other: a round right after the other engine's
waited about a second for its first output), in three sessions that alternate (kit then
proxy, proxy then kit, kit then proxy). In each, after warm-up rounds, rounds of 1, 4 and
16 jobs submitted at once (streams of 64 tokens, greedy, read with /stream as a client
does). Per level and worker:

* first text: submission -> the first text at the client, p50 and p95 over the jobs;
* inter-chunk gap: the median time between a job's chunks at the client;
* tok/s: all tokens of a round over its wall time (median of rounds); posts per job.

The target: kit / proxy first text <= 1.0 (p50 and p95) at every level.

Both workers run with WORKER_LOOP_TRACE=1, so every job's way through its worker is in
the worker's log (llmkit/runtime/timeline.py); the report shows, for the 16-stream
rounds, the median time from submission to each step (the timeline in
docs/WORKER_LOOP.md).

    .venv/bin/python -m bench.first_text [--quick] [--model SPEC] [--levels 1,4,16]
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import runner
from bench.stats import median, pct, ratio, ratio_lines, table
from bench.workload import JobStats, job_input, now

MODIFIER = 16
TOKENS, QUICK_TOKENS = 64, 8
# Rounds per level: more at low concurrency, where a round has fewer jobs.
ROUNDS = {1: 6, 4: 4, 16: 2}  # per session and worker
SESSIONS = 3  # kit then proxy, proxy then kit, kit then proxy
TRACE = {"WORKER_LOOP_TRACE": "1"}
PROXY = Path(__file__).with_name("proxy_worker.py")
KIT, SERVE = "kit worker", "vllm serve proxy"
# A job's steps in the workers' traces, in order (timeline.py), and the client's last one.
STEPS = [("fetched", "taken (job-take reply)"), ("started", "handler task started"),
         ("engine-in", "request handed to vLLM"), ("engine-out", "vLLM's first output"),
         ("first-text", "first text out of the handler"), ("post", "first stream post sent"),
         ("posted", "first stream post answered"), ("client", "first text at the client")]


def add_args(p) -> None:
    p.add_argument("--levels", default=None, help="concurrent streams per round, e.g. 1,4,16")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per level, worker and session")
    p.add_argument("--sessions", type=int, default=None,
                   help=f"sessions of both workers (default {SESSIONS}; 1 with --quick)")


def levels_of(args) -> list[int]:
    if args.levels:
        return [int(x) for x in args.levels.split(",")]
    return [1, 4] if args.quick else [1, 4, 16]


def measure(ctx: runner.Context, args) -> dict:
    tokens = QUICK_TOKENS if args.quick else TOKENS
    levels = levels_of(args)
    sessions = args.sessions or (1 if args.quick else SESSIONS)
    rounds: dict = {(n, w): [] for n in levels for w in (KIT, SERVE)}
    traces: dict = {w: [] for w in (KIT, SERVE)}
    for s in range(sessions):
        for worker in (KIT, SERVE) if s % 2 == 0 else (SERVE, KIT):
            ep = endpoint(ctx, worker, s)
            try:
                ctx.run(ep.start())
                ctx.starts[f"{worker}, session {s + 1}"] = ep.start_s
                runner.say(f"session {s + 1}: {worker} ready in {ep.start_s:.0f} s")
                mark = ep.log_mark()
                got = ctx.run(session(ep, levels, tokens, args))
            finally:
                ctx.run(ep.stop())
            for n, rs in got.items():
                rounds[n, worker] += rs
            traces[worker].append(timeline_of(ep.log_path, mark, got[max(levels)]))
    rows = {f"{n}|{w}": row(n, w, rs, tokens) for (n, w), rs in rounds.items()}
    ratios = []
    for n in levels:
        k, v = rows[f"{n}|{KIT}"], rows[f"{n}|{SERVE}"]
        for q in ("p50", "p95"):
            ratios.append(ratio(f"kit / vllm serve proxy first text {q}, {n} stream(s)",
                                _div(k[f"first_{q}_ms"], v[f"first_{q}_ms"]), 1.0,
                                at_most=True))
        ratios.append(ratio(f"kit / vllm serve proxy tok/s, {n} stream(s)",
                            _div(k["tok_s"], v["tok_s"]), None))
        ratios.append(ratio(f"kit / vllm serve proxy posts per job, {n} stream(s)",
                            _div(k["posts_per_job"], v["posts_per_job"]), None))
    return {"levels": levels, "tokens": tokens, "sessions": sessions, "rows": rows,
            "timeline": {w: merge(ts) for w, ts in traces.items()}, "ratios": ratios}


def endpoint(ctx: runner.Context, worker: str, s: int):
    """The local endpoint with one worker: the kit's handler.py, or the proxy worker."""
    from bench.endpoint import BenchEndpoint

    handler = ctx.args.handler if worker == KIT else PROXY
    name = f"{'kit' if worker == KIT else 'proxy'}-session{s + 1}"
    return BenchEndpoint(MODIFIER, ctx.log_dir, handler, env=TRACE, name=name)


async def session(ep, levels: list[int], tokens: int, args) -> dict:
    """Warm-up rounds at each level (one-time costs: the first batch of each size), then
    the measured rounds: {streams: [(wall seconds, jobs)]}."""
    async def one_round(n: int, first: int) -> tuple[float, list[JobStats]]:
        t0 = now()
        jobs = await asyncio.gather(*(ep.stream_job(job_input(first + i, tokens))
                                      for i in range(n)))
        return now() - t0, list(jobs)

    for n in levels:
        await one_round(n, 0)
    got = {}
    for n in levels:
        reps = args.rounds or (1 if args.quick else ROUNDS.get(n, 2))
        got[n] = [await one_round(n, r * n) for r in range(reps)]
    return got


def row(n: int, worker: str, rounds: list, tokens: int) -> dict:
    jobs = [j for _, js in rounds for j in js]
    firsts = [j.ttft * 1e3 for j in jobs]
    return {"streams": n, "worker": worker, "rounds": len(rounds), "jobs": len(jobs),
            "first_p50_ms": pct(firsts, 50), "first_p95_ms": pct(firsts, 95),
            "gap_ms": median([g * 1e3 for j in jobs for g in j.gaps]),
            "tok_s": median([len(js) * tokens / wall for wall, js in rounds]),
            "posts_per_job": median([j.chunks for j in jobs])}


def timeline_of(log: Path, mark: int, rounds: list) -> dict:
    """Seconds from each job's submission to each of its steps (the worker's trace in its
    log, from ``mark``), for the jobs of ``rounds``; and the job-takes they came in."""
    from llmkit.runtime import timeline

    with log.open(errors="replace") as f:
        f.seek(mark)
        events = timeline.parse(f)
    jobs = {j.job_id: j for _, js in rounds for j in js}
    at: dict = {step: [] for step, _ in STEPS}
    takes = set()
    for job_id, job in jobs.items():
        seen = {}
        for t, name, detail in events:
            ids = detail.split(",") if name == "fetched" else [detail]
            if job_id in ids and name not in seen:
                seen[name] = t
                if name == "fetched":
                    takes.add(t)
        seen["client"] = job.wall_first
        for step, _ in STEPS:
            if seen.get(step) is not None:
                at[step].append(seen[step] - job.wall_start)
    return {"streams": len(rounds[0][1]), "rounds": len(rounds), "takes": len(takes),
            "at_s": at, "gc_ms": [float(d) for _, name, d in events if name == "gc-2"]}


def merge(traces: list[dict]) -> dict:
    """One worker's timelines over its sessions: median and max per step, in ms."""
    at = {step: [x for t in traces for x in t["at_s"][step]] for step, _ in STEPS}
    return {"streams": traces[0]["streams"], "jobs": len(at["client"]),
            "rounds": sum(t["rounds"] for t in traces),
            "takes": sum(t["takes"] for t in traces),
            "gc_ms": [x for t in traces for x in t.get("gc_ms", [])],
            "steps_ms": {step: _ms(median(v)) for step, v in at.items()},
            "max_ms": {step: _ms(max(v)) if v else None for step, v in at.items()}}


def _ms(x):
    return None if x is None else x * 1e3


def _div(a, b):
    return a / b if a is not None and b else None


def report(r: dict) -> str:
    head = (f"## 8. First text under load ({r.get('model', '')}, {r['tokens']} tokens per "
            f"stream, CONCURRENCY_MODIFIER={MODIFIER}, same engine flags)")
    rows = [[v["streams"], v["worker"], v["first_p50_ms"], v["first_p95_ms"], v["gap_ms"],
             v["tok_s"], v["posts_per_job"], v["jobs"]] for v in r["rows"].values()]
    out = [head, "", table(["streams", "worker", "first text p50 ms", "p95 ms",
                            "inter-chunk gap ms", "tok/s", "posts/job", "jobs"], rows), "",
           "first text: submission -> first text at the client; the streams of a round are "
           "submitted at once; the proxy worker (bench/proxy_worker.py) forwards each job "
           "to `vllm serve` over HTTP and posts each read of its stream"]
    tl = r.get("timeline") or {}
    if tl:
        names = list(tl)
        steps = [[label, *(tl[w]["steps_ms"].get(step) for w in names),
                  *(tl[w]["max_ms"].get(step) for w in names)] for step, label in STEPS]
        any_tl = next(iter(tl.values()))
        out += ["", f"Where a job's first text waits, {any_tl['streams']} streams at once "
                "(ms from submission, median over the jobs; max after; from "
                "WORKER_LOOP_TRACE):", "",
                table(["step", *(f"{w} p50" for w in names), *(f"{w} max" for w in names)],
                      steps), "",
                "job-takes per round of those: " + ", ".join(
                    f"{w} {tl[w]['takes'] / max(1, tl[w]['rounds']):.1f}" for w in names),
                "full garbage collections in the worker process while it served (each "
                "stops its event loop): " + ", ".join(
                    f"{w} {len(tl[w]['gc_ms'])}" + (f" (longest {max(tl[w]['gc_ms']):.0f} ms)"
                                                     if tl[w]["gc_ms"] else "")
                    for w in names)]
    out += ["", ratio_lines(r["ratios"])]
    return "\n".join(out)


def main() -> None:
    runner.script_main("first_text", __doc__, add_args, measure, report)


if __name__ == "__main__":
    main()
