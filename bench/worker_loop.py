"""2. Worker loop: the runpod SDK's own job-fetch loop against the kit's.

The kit's loop (llmkit/runtime/worker_loop.py, which serve() installs) fetches a job as soon as a
slot frees; the SDK's (WORKER_LOOP=sdk) sleeps a second when it thinks it is full. Both
run handler.py in the SDK's production loop under the local endpoint
(`python -m llmkit.endpoint`). Variants alternate.

* Tokens: the exported handler called directly in process vs the endpoint, stream mode,
  one client submitting its next job when the last ends (a client reading /stream). The
  time is split into start (submit -> first chunk at the client), streaming (first ->
  last chunk) and end (last chunk -> COMPLETED).
* Short jobs (8 tokens, /runsync), closed loop: modifier 1 with 2 clients (a job is
  always waiting when one ends), modifier 4 with 8. Jobs per second, and the queue wait
  from a slot freeing (or the job arriving, if later) to the worker taking the job,
  from the endpoint's own delayTime and executionTime.
* Logs: 16 concurrent stream jobs at modifier 16 with the worker's default log level
  (INFO) and with RUNPOD_DEBUG_LEVEL=DEBUG (the SDK's own default).

    .venv/bin/python -m bench.worker_loop [--quick] [--model SPEC] [--json OUT]
"""

from __future__ import annotations

import asyncio

from bench import runner, stats, workload
from bench.endpoint import BenchEndpoint
from llmkit.endpoint.harness import EndpointError

TARGET = 0.97  # endpoint / direct handler tokens per second, kit's loop, modifier 1
TARGET_WAIT_MS = 50  # p50 and p95 queue wait with the kit's loop
SHORT_JOBS = 48  # short jobs per round, split among the clients: 96 or more per loop
PROBE = "bench-post-probe"
SDK = {"WORKER_LOOP": "sdk"}
DEBUG = {"RUNPOD_DEBUG_LEVEL": "DEBUG"}
LOOPS = {"kit": None, "SDK": SDK}


async def post_cost(ctx: runner.Context, n: int) -> dict:
    """The SDK's own stream_result(), timed: n chunk posts to a queue-only endpoint.

    A probe worker (worker_env() of the endpoint) takes one job and posts n chunks
    with runpod's rp_http.stream_result, exactly as the worker loop does per chunk.
    """
    import aiohttp
    from runpod.serverless.modules import rp_http

    from llmkit.endpoint import worker_env

    ep = BenchEndpoint(1, ctx.log_dir, ctx.args.handler, workers=0)
    await ep.start()
    try:
        env = worker_env(ep.process.root, ep.process.endpoint_id, PROBE, ep.process.api_key)
        async with ep.session.post(f"{ep.url}/run", json={"input": {"prompt": "x"}}) as r:
            await r.json()
        take = env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", PROBE) + "&job_in_progress=0"
        async with aiohttp.ClientSession(headers={"Authorization": env["RUNPOD_AI_API_KEY"]}) \
                as session:
            async with session.get(take) as r:
                job = await r.json()
            job = job[0] if isinstance(job, list) else job
            saved = rp_http.JOB_STREAM_URL, rp_http.JOB_DONE_URL
            rp_http.JOB_STREAM_URL = env["RUNPOD_WEBHOOK_POST_STREAM"].replace(
                "$RUNPOD_POD_ID", PROBE)
            rp_http.JOB_DONE_URL = env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace(
                "$RUNPOD_POD_ID", PROBE)
            try:
                await rp_http.stream_result(session, {"output": {"text": " warm"}}, job)
                t0 = workload.now()
                for _ in range(n):
                    await rp_http.stream_result(session, {"output": {"text": " tok"}}, job)
                per_post = (workload.now() - t0) / n
                await rp_http.send_result(session, {"output": []}, job, is_stream=True)
            finally:
                rp_http.JOB_STREAM_URL, rp_http.JOB_DONE_URL = saved
    finally:
        await ep.stop()
    return {"posts": n, "per_post_us": per_post * 1e6}


def add_args(p) -> None:
    p.add_argument("--tokens", type=int, default=None, help="tokens per job (64; quick 32)")
    p.add_argument("--reps", type=int, default=None, help="rounds per variant (3)")
    p.add_argument("--jobs", type=int, default=3, help="jobs back to back per round (3)")
    p.add_argument("--short-jobs", type=int, default=None,
                   help=f"short jobs per round and client ({SHORT_JOBS} / clients; quick 3)")
    p.add_argument("--short-reps", type=int, default=None, help="short-job rounds per loop (2)")
    p.add_argument("--log-rounds", type=int, default=None,
                   help="rounds of 16 concurrent jobs per log level (2; quick 1)")


async def short_job(ep: BenchEndpoint, i: int, tokens: int) -> dict:
    """One /runsync job; its submit, take and end times on this process's clock."""
    t0 = workload.now()
    async with ep.session.post(f"{ep.url}/runsync?wait=300000",
                               json={"input": workload.job_input(i, tokens, stream=False)}) as r:
        body = await r.json()
    t1 = workload.now()
    if body.get("status") != "COMPLETED":
        raise EndpointError(f"/runsync: {body}")
    taken = t0 + body["delayTime"] / 1e3
    return {"submitted": t0, "taken": taken, "done": taken + body["executionTime"] / 1e3,
            "replied": t1}


def slot_waits(jobs: list[dict], slots: int) -> list[float]:
    """For each job: from when both it and a free slot were there, to its take.

    Slots are reused in order: the n-th take after the first `slots` gets the slot
    freed by the n-th job to end. Takes and ends are matched by rank, not by merging
    them on one time line: they are rebuilt from the endpoint's whole-millisecond
    delayTime and executionTime, so a take can appear a few ms before the end that
    freed its slot. Merged, that take found no free slot and every later take was
    paired with the slot freed one job earlier: waits of a whole job's length.
    """
    takes = sorted(jobs, key=lambda j: j["taken"])
    ends = sorted(j["done"] for j in jobs)
    waits = []
    for n, job in enumerate(takes):
        ready = job["submitted"] if n < slots else max(job["submitted"], ends[n - slots])
        waits.append(max(0.0, job["taken"] - ready))
    return waits


async def short_round(ep: BenchEndpoint, clients: int, per_client: int, tokens: int,
                      offset: int) -> dict:
    jobs: list[dict] = []

    async def client(k: int) -> None:
        for n in range(per_client):
            jobs.append(await short_job(ep, offset + k * per_client + n, tokens))

    t0 = workload.now()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"jobs": jobs, "seconds": workload.now() - t0, "t0": t0}


def measure_short(ctx: runner.Context, args, modifier: int, clients: int) -> dict:
    tokens, reps = 8, args.short_reps or (1 if args.quick else 2)
    per_client = args.short_jobs or (3 if args.quick else -(-SHORT_JOBS // clients))
    for env in LOOPS.values():
        ctx.launch_endpoint(modifier, env)
    eps = {name: ctx.endpoint(modifier, env) for name, env in LOOPS.items()}

    async def go():
        for ep in eps.values():
            await short_round(ep, clients, 1, tokens, 0)  # warm-up
        rounds = {name: [] for name in eps}
        for i, name in enumerate(workload.interleave(list(eps), reps)):
            rounds[name].append(await short_round(eps[name], clients, per_client, tokens,
                                                  100 * i))
        return rounds

    rows = {}
    for name, rs in ctx.run(go()).items():
        waits = [w * 1e3 for r in rs for w in slot_waits(r["jobs"], modifier)]
        jobs = [j for r in rs for j in r["jobs"]]
        rows[f"{name} loop"] = {
            "jobs_s": stats.median([len(r["jobs"]) / r["seconds"] for r in rs]),
            "wait_p50_ms": stats.pct(waits, 50), "wait_p95_ms": stats.pct(waits, 95),
            "exec_ms": stats.median([(j["done"] - j["taken"]) * 1e3 for j in jobs]),
            "jobs": len(jobs), "waits_ms": [round(w, 1) for w in waits],
            # Each job's submit, take, end and reply, ms from its round's start: a wait
            # in the tail can be traced to the jobs around it.
            "timelines_ms": [[[round((j[k] - r["t0"]) * 1e3, 1)
                               for k in ("submitted", "taken", "done", "replied")]
                              for j in r["jobs"]] for r in rs]}
    return {"modifier": modifier, "clients": clients, "tokens": tokens,
            "jobs_per_client": per_client, "reps": reps, "rows": rows}


def measure_logs(ctx: runner.Context, args) -> dict:
    """16 stream jobs at once, modifier 16: the default INFO against the SDK's DEBUG."""
    n, tokens = (2, 32) if args.quick else (16, args.tokens or 64)
    rounds = args.log_rounds or (1 if args.quick else 2)
    variants = {"INFO (the worker's default)": None, "DEBUG (RUNPOD_DEBUG_LEVEL=DEBUG)": DEBUG}
    for env in variants.values():
        ctx.launch_endpoint(n, env)
    eps = {name: ctx.endpoint(n, env) for name, env in variants.items()}

    async def go():
        out = {name: [] for name in eps}
        for ep in eps.values():
            await ep.stream_job(workload.job_input(0, 8))  # warm-up
        for i, name in enumerate(workload.interleave(list(eps), rounds)):
            ep = eps[name]
            mark = ep.log_mark()
            rnd = await workload.closed_loop(
                lambda j, i=i, ep=ep: ep.stream_job(workload.job_input(i * 31 + j, tokens)), n, 1)
            with ep.log_path.open(errors="replace") as f:
                f.seek(mark)
                text = f.read()
            lines = sum(1 for line in text.splitlines() if line.startswith("[worker-"))
            out[name].append({"tok_s": rnd.tok_s, "lines_per_job": lines / n,
                              "log_kb_per_job": len(text.encode()) / n / 1024,
                              "chunks": stats.median([j.chunks for j in rnd.jobs])})
        return out

    rows = {}
    for name, rs in ctx.run(go()).items():
        rows[name] = {k: stats.median([r[k] for r in rs]) for k in rs[0]}
    ctx.stop_endpoint(n, DEBUG)
    return {"jobs": n, "tokens": tokens, "rounds": rounds, "rows": rows}


def measure(ctx: runner.Context, args) -> dict:
    tokens = args.tokens or (32 if args.quick else 64)
    reps = args.reps or 3
    m1 = 2 if args.quick else 1  # quick: run_all's endpoint (modifier 2), a smoke test
    ctx.launch_endpoint(m1)
    ctx.launch_endpoint(m1, SDK)  # both start beside the in-process engine
    ip = ctx.inproc()
    eps = {f"endpoint, modifier {m1}, kit loop": ctx.endpoint(m1),
           f"endpoint, modifier {m1}, SDK loop": ctx.endpoint(m1, SDK)}
    variants = ["handler (direct)", *eps]

    def runner(variant):
        if variant.startswith("handler"):
            return lambda i: ip.handler_job(workload.job_input(i, tokens))
        return lambda i: eps[variant].stream_job(workload.job_input(i, tokens))

    async def go():
        for v in variants:  # warm-up
            await runner(v)(0)
        rounds = {v: [] for v in variants}
        for i, v in enumerate(workload.interleave(variants, reps)):
            rep = i // len(variants)
            rnd = await workload.closed_loop(lambda j, v=v, rep=rep: runner(v)(rep * 7 + j), 1,
                                      args.jobs)
            rounds[v].append(rnd)
        return rounds

    rounds = ctx.run(go())
    rows = {}
    for v, rs in rounds.items():
        jobs = [j for r in rs for j in r.jobs]
        rows[v] = {
            "tok_s": stats.median([r.tok_s for r in rs]),
            "job_s": stats.median([j.latency for j in jobs]),
            "start_ms": stats.median([j.ttft * 1e3 for j in jobs]),
            "stream_ms": stats.median([(j.chunk_times[-1] - j.first) * 1e3 for j in jobs]),
            "end_ms": stats.median([(j.end - j.chunk_times[-1]) * 1e3 for j in jobs]),
            "chunks": stats.median([j.chunks for j in jobs]),
            "bytes": stats.median([j.bytes for j in jobs]),
            "rounds": len(rs), "jobs": len(jobs),
            "job_ms": [round(j.latency * 1e3, 1) for j in jobs],
            "start_ms_each": [round(j.ttft * 1e3, 1) for j in jobs],
        }
    base = rows[variants[0]]
    ratios = []
    for v in variants[1:]:
        x = rows[v]
        x["per_chunk_us"] = (x["stream_ms"] - base["stream_ms"]) * 1e3 / max(x["chunks"], 1)
        x["extra_start_ms"] = x["start_ms"] - base["start_ms"]
        target = TARGET if f"modifier {m1}, kit" in v else None
        ratios.append(stats.ratio(f"{v} / direct handler tok/s", x["tok_s"] / base["tok_s"],
                              target))
    short = [measure_short(ctx, args, m1, 2 * m1)]
    ctx.stop_endpoint(m1, SDK)
    if not args.quick:
        ctx.stop_endpoint(m1)  # engines take memory: the machine may be small
        short.append(measure_short(ctx, args, 4, 8))
        ctx.stop_endpoint(4)
        ctx.stop_endpoint(4, SDK)
    for s in short:
        kit, sdk = s["rows"]["kit loop"], s["rows"]["SDK loop"]
        for p in (50, 95):
            ratios.append(stats.ratio(
                f"queue wait p{p} ms, kit loop, modifier {s['modifier']} ({kit['jobs']} jobs)",
                kit[f"wait_p{p}_ms"], TARGET_WAIT_MS, f"SDK loop {sdk[f'wait_p{p}_ms']:.0f} ms",
                at_most=True))
        ratios.append(stats.ratio(f"short jobs/s, kit / SDK loop, modifier {s['modifier']}",
                              kit["jobs_s"] / sdk["jobs_s"], None))
    logs = measure_logs(ctx, args)
    posts = ctx.run(post_cost(ctx, 100 if args.quick else 500))
    return {"tokens_per_job": tokens, "reps": reps, "jobs_per_round": args.jobs,
            "rows": rows, "ratios": ratios, "post": posts, "short": short, "logs": logs}


def report(r: dict) -> str:
    rows = [[v, x["tok_s"], x["job_s"] * 1e3, x["start_ms"], x["stream_ms"], x["end_ms"],
             x["chunks"], x["bytes"]]
            for v, x in r["rows"].items()]
    out = [
        f"## 2. Worker loop overhead ({r['model']}, {r['tokens_per_job']} tokens/job, stream "
        f"mode, {r['reps']} rounds x {r['jobs_per_round']} jobs back to back per variant)",
        stats.table(["path", "tok/s", "job ms", "start ms", "stream ms", "end ms",
                 "chunks/job", "bytes/job"], rows),
        "start = submit -> first chunk at the client; stream = first -> last chunk; "
        "end = last chunk -> COMPLETED seen. kit loop: handler.py as generated; SDK loop: "
        "WORKER_LOOP=sdk, the runpod SDK's own JobScaler.",
    ]
    for s in r.get("short", []):
        out += [
            f"Short jobs ({s['tokens']} tokens, /runsync), modifier {s['modifier']}, "
            f"{s['clients']} closed-loop clients x {s['jobs_per_client']} jobs, "
            f"{s['reps']} rounds per loop:",
            stats.table(["loop", "jobs/s", "queue wait p50 ms", "queue wait p95 ms",
                     "execution ms", "jobs"],
                    [[k, x["jobs_s"], x["wait_p50_ms"], x["wait_p95_ms"], x["exec_ms"],
                      x["jobs"]] for k, x in s["rows"].items()]),
        ]
    out.append("queue wait = from a slot freeing (or the job arriving, if later) to the "
               "worker taking the job, from the endpoint's delayTime and executionTime")
    if r.get("logs"):
        lg = r["logs"]
        out += [
            f"Log level, {lg['jobs']} stream jobs at once ({lg['tokens']} tokens, modifier "
            f"{lg['jobs']}, {lg.get('rounds', 1)} round(s) per level):",
            stats.table(["worker log level", "tok/s", "log lines/job", "log KiB/job",
                     "chunks/job"],
                    [[k, x["tok_s"], x["lines_per_job"], x["log_kb_per_job"], x["chunks"]]
                     for k, x in lg["rows"].items()]),
        ]
    out += [
        f"one chunk post with the SDK's rp_http.stream_result to the local endpoint: "
        f"{r['post']['per_post_us']:.0f} us (mean of {r['post']['posts']} in a row)",
        stats.ratio_lines(r["ratios"]),
    ]
    return "\n".join(out)


if __name__ == "__main__":
    runner.script_main("worker_loop", __doc__, add_args, measure, report)
