"""2. Worker loop overhead: the local endpoint + the SDK's worker loop vs the handler.

The same workload, stream mode, one job at a time (a client that submits its next
job when the last one ends): the exported handler called directly in process, and
the local endpoint (`python -m llmkit.endpoint`), whose SDK worker runs handler.py in
production mode, polled by a client reading /stream. The endpoint runs twice: with
CONCURRENCY_MODIFIER=1 (the kit's default) and with 16. Variants
alternate. The end-to-end time is split into start (submit -> first chunk at the
client), streaming (first -> last chunk) and end (last chunk -> COMPLETED).

    .venv/bin/python -m bench.worker_loop [--quick] [--model SPEC] [--json OUT]
"""

from __future__ import annotations

from bench import runner, stats, workload
from bench.endpoint import BenchEndpoint

TARGET = 0.90
PROBE = "bench-post-probe"


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
    p.add_argument("--modifiers", default=None,
                   help="CONCURRENCY_MODIFIER of each endpoint to compare (1,16; quick 2)")


def measure(ctx: runner.Context, args) -> dict:
    tokens = args.tokens or (32 if args.quick else 64)
    reps = args.reps or 3
    modifiers = [int(x) for x in (args.modifiers or ("2" if args.quick else "1,16")).split(",")]
    ip = ctx.inproc()
    eps = {m: ctx.endpoint(m) for m in modifiers}
    variants = ["handler (direct)", *(f"endpoint, modifier {m}" for m in modifiers)]

    def job_fn(variant):
        if variant.startswith("handler"):
            return lambda i: ip.handler_job(workload.job_input(i, tokens))
        ep = eps[int(variant.rsplit(" ", 1)[1])]
        return lambda i: ep.stream_job(workload.job_input(i, tokens))

    async def go():
        for v in variants:  # warm-up
            await job_fn(v)(0)
        marks = {m: ep.log_mark() for m, ep in eps.items()}
        rounds = {v: [] for v in variants}
        for i, v in enumerate(workload.interleave(variants, reps)):
            rep = i // len(variants)
            rnd = await workload.closed_loop(lambda j, v=v, rep=rep: job_fn(v)(rep * 7 + j), 1,
                                             args.jobs)
            rounds[v].append(rnd)
        waits = {m: ep.queue_waits(marks[m]) for m, ep in eps.items()}
        return rounds, waits

    rounds, waits = ctx.run(go())
    posts = ctx.run(post_cost(ctx, 100 if args.quick else 500))
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
        w = waits[int(v.rsplit(" ", 1)[1])]
        x["queue_wait_s"] = w
        x["queue_wait_median_s"] = stats.median(w)
        ratios.append(stats.ratio(f"{v} / direct handler tok/s", x["tok_s"] / base["tok_s"],
                                  TARGET))
    return {"tokens_per_job": tokens, "reps": reps, "jobs_per_round": args.jobs,
            "rows": rows, "ratios": ratios, "post": posts}


def report(r: dict) -> str:
    rows = [[v, x["tok_s"], x["job_s"] * 1e3, x["start_ms"], x["stream_ms"], x["end_ms"],
             stats.fmt(x.get("queue_wait_median_s"), 2), x["chunks"], x["bytes"]]
            for v, x in r["rows"].items()]
    return "\n".join([
        f"## 2. Worker loop overhead ({r['model']}, {r['tokens_per_job']} tokens/job, stream "
        f"mode, {r['reps']} rounds x {r['jobs_per_round']} jobs back to back per variant)",
        stats.table(["path", "tok/s", "job ms", "start ms", "stream ms", "end ms",
                     "queue wait s", "chunks/job", "bytes/job"], rows),
        "start = submit -> first chunk at the client; stream = first -> last chunk; "
        "end = last chunk -> COMPLETED seen; queue wait = submit -> taken by the worker "
        "(endpoint log, 0.1 s resolution)",
        f"one chunk post with the SDK's rp_http.stream_result to the local endpoint: "
        f"{r['post']['per_post_us']:.0f} us (mean of {r['post']['posts']} in a row)",
        stats.ratio_lines(r["ratios"]),
    ])


if __name__ == "__main__":
    runner.script_main("worker_loop", __doc__, add_args, measure, report)
