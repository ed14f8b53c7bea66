"""4. Time to first token in stream mode, and how chunks are formed.

TTFT three ways, short jobs one at a time on an idle worker: vLLM's engine alone
(generate() -> first output), the handler in process (handler(job) -> first chunk),
and a client of the local endpoint (POST /run -> first chunk read from /stream).

Chunks: one long answer through the endpoint (the worker posts one HTTP request per
chunk): chunks per job, tokens and bytes per chunk. The handler's policy: vLLM's
RequestOutputKind.DELTA (while the worker awaits a post, vLLM merges the tokens that
arrive) plus a gap between chunks that starts at STREAM_INTERVAL_MS (100 ms) and
doubles per chunk up to STREAM_INTERVAL_MAX_MS (500 ms), the first chunk leaving at
once. It is measured through the endpoint and with a consumer that takes `--post-ms`
per chunk (a slow uplink), and compared, replayed on the same engine token timeline,
with DELTA alone, a flat 100 ms gap, and the official vLLM worker's old policy
(chunks of 1, 3, 9, 27, then 50 tokens).

    .venv/bin/python -m bench.ttft_chunks [--quick] [--model SPEC] [--json OUT]
"""

from __future__ import annotations

import asyncio

from bench import runner, stats, workload


def add_args(p) -> None:
    p.add_argument("--reps", type=int, default=None, help="TTFT jobs per path (4; quick 3)")
    p.add_argument("--long", type=int, default=None,
                   help="tokens of the long answer (128; quick 64)")
    p.add_argument("--post-ms", type=float, default=30.0,
                   help="simulated post latency of a slow uplink, for the measured DELTA run")
    p.add_argument("--modifier", type=int, default=None,
                   help="the endpoint's CONCURRENCY_MODIFIER (1; quick 2)")


# --- chunking policies, replayed on one token timeline ---------------------------


def policy_official(times: list[float], cap: int = 50, growth: int = 3) -> list[tuple]:
    """Runpod's old vLLM worker: batch 1, then x3 per chunk up to 50 tokens."""
    chunks, size, i = [], 1, 0
    while i < len(times):
        j = min(i + size, len(times))
        chunks.append((times[j - 1], j - i))
        i, size = j, min(size * growth, cap)
    return chunks


def policy_delta(times: list[float], post_s: float, min_interval_s: float = 0.0,
                 max_interval_s: float | None = None) -> list:
    """vLLM DELTA merging: a chunk holds every token that arrived while the previous
    post was in flight (post_s), or, with min_interval_s, since the last post began.
    With max_interval_s, the handler's policy: that gap doubles per chunk up to it.
    The answer's end goes out as soon as the previous post is done, gap or not."""
    chunks, i, ready, posted, gap = [], 0, times[0], times[0], min_interval_s
    while i < len(times):
        t = max(ready, times[i])
        if times[-1] < t:
            t = max(posted, times[-1])
        j = i
        while j < len(times) and times[j] <= t:
            j += 1
        chunks.append((t, j - i))
        i, ready, posted = j, t + max(post_s, gap), t + post_s
        if max_interval_s is not None:
            gap = min(2 * gap, max_interval_s)
    return chunks


def summarise(times: list[float], chunks: list[tuple], post_s: float) -> dict:
    """Posts, tokens per post and how late tokens reach the client (post included)."""
    delays, k = [], 0
    for t_emit, n in chunks:
        for _ in range(n):
            delays.append(t_emit + post_s - times[k])
            k += 1
    sizes = [n for _, n in chunks]
    return {"posts": len(chunks), "tokens_per_post": sum(sizes) / len(sizes),
            "max_tokens_per_post": max(sizes), "first_token_ms": delays[0] * 1e3,
            "mean_delay_ms": sum(delays) / len(delays) * 1e3,
            "max_delay_ms": max(delays) * 1e3}


def compare_policies(times: list[float], post_ms_list=(2.0, 30.0)) -> list[dict]:
    rows = []
    for post_ms in post_ms_list:
        post = post_ms / 1e3
        cases = [("one post per token", [(t, 1) for t in times]),
                 ("official 1,3,9,27,50", policy_official(times)),
                 ("DELTA alone (STREAM_INTERVAL_MS=0)", policy_delta(times, post)),
                 ("kit: DELTA + 100 ms between posts", policy_delta(times, post, 0.1)),
                 ("kit: DELTA + 100 -> 500 ms between posts",
                  policy_delta(times, post, 0.1, 0.5))]
        for name, chunks in cases:
            rows.append({"post_ms": post_ms, "policy": name, **summarise(times, chunks, post)})
    return rows


def token_times(st: workload.JobStats) -> list[float]:
    """Per-token arrival times from a raw DELTA run (a step's tokens share its time)."""
    out = []
    for t, n in zip(st.chunk_times, st.chunk_tokens, strict=True):
        out += [t] * n
    return out


def tokens_per_chunk(raw: workload.JobStats, texts: list[str]) -> list[int] | None:
    """Map chunk texts onto the raw run's tokens (same greedy answer), else None."""
    if "".join(texts) != raw.text:
        return None
    ends, chars, toks = {}, 0, 0
    for t, n in zip(raw.texts, raw.chunk_tokens, strict=True):
        chars += len(t)
        toks += n
        ends[chars] = toks
    out, chars, prev = [], 0, 0
    for text in texts:
        chars += len(text)
        if chars not in ends:
            return None
        out.append(ends[chars] - prev)
        prev = ends[chars]
    return out


def measure(ctx: runner.Context, args) -> dict:
    reps = args.reps or (3 if args.quick else 4)
    long = args.long or (64 if args.quick else 128)
    ip = ctx.inproc()
    modifier = args.modifier or (2 if args.quick else 1)
    ep = ctx.endpoint(modifier)

    async def go():
        short = workload.job_input(0, 8)
        await ip.raw_job(short)
        await ip.handler_job(short)
        await ep.stream_job(short)
        ttft = {"engine (raw vLLM)": [], "handler (in process)": [],
                "endpoint client (/run -> /stream)": []}
        names = list(ttft)
        for i, name in enumerate(workload.interleave(names, reps)):
            inp = workload.job_input(i // 3, 8)
            if name.startswith("engine"):
                st = await ip.raw_job(inp, ip.prepare(inp))
            elif name.startswith("handler"):
                st = await ip.handler_job(inp)
            else:
                await asyncio.sleep(1.5)  # an idle worker: its take poll is open
                st = await ep.stream_job(inp)
            ttft[name].append(st.ttft)
        long_inp = workload.job_input(1, long)
        raw = await ip.raw_job(long_inp, ip.prepare(long_inp))
        await asyncio.sleep(1.5)
        ep_job = await ep.stream_job(long_inp)
        slow = await ip.handler_job(long_inp, consumer_delay=args.post_ms / 1e3)
        return ttft, raw, ep_job, slow

    ttft, raw, ep_job, slow = ctx.run(go())
    if raw.tokens != long:
        raise RuntimeError(f"raw vLLM made {raw.tokens} tokens, not {long}")
    ttft_rows = {k: {"p50_ms": stats.pct(v, 50) * 1e3, "min_ms": min(v) * 1e3,
                     "max_ms": max(v) * 1e3, "n": len(v)} for k, v in ttft.items()}
    chunk_rows = {}
    for name, st in (("endpoint (local posts)", ep_job),
                     (f"handler, {args.post_ms:.0f} ms per post", slow)):
        per = tokens_per_chunk(raw, st.texts)
        chunk_rows[name] = {
            "chunks": st.chunks, "tokens": long,
            "tokens_per_chunk": long / st.chunks,
            "max_tokens_per_chunk": max(per) if per else None,
            "first_chunk_tokens": per[0] if per else None,
            "bytes_per_chunk": st.bytes / st.chunks, "bytes": st.bytes,
            "seconds": st.latency, "mapped": per is not None,
        }
    times = token_times(raw)
    step_ms = (times[-1] - times[0]) / max(len(times) - 1, 1) * 1e3
    # The same policies on a GPU-like timeline: 512 tokens at 5 ms per token.
    gpu_times = [i * 0.005 for i in range(512)]
    return {"reps": reps, "long_tokens": long, "modifier": modifier,
            "ttft": ttft_rows, "chunks": chunk_rows, "engine_ms_per_token": step_ms,
            "policies_here": compare_policies(times, (2.0, args.post_ms)),
            "policies_gpu_5ms": compare_policies(gpu_times, (2.0, args.post_ms)),
            "ratios": [stats.ratio("engine TTFT / client TTFT",
                                   ttft_rows["engine (raw vLLM)"]["p50_ms"]
                                   / ttft_rows["endpoint client (/run -> /stream)"]["p50_ms"],
                                   None)]}


def report(r: dict) -> str:
    ttft = stats.table(["TTFT, 8-token jobs on an idle worker", "p50 ms", "min ms", "max ms", "n"],
                       [[k, v["p50_ms"], v["min_ms"], v["max_ms"], v["n"]]
                    for k, v in r["ttft"].items()])
    chunks = stats.table(
        [f"chunks of a {r['long_tokens']}-token answer", "chunks (posts)", "tokens/chunk",
         "max tokens/chunk", "first chunk tokens", "bytes/chunk", "job s"],
        [[k, v["chunks"], v["tokens_per_chunk"], stats.fmt(v["max_tokens_per_chunk"]),
          stats.fmt(v["first_chunk_tokens"]), v["bytes_per_chunk"], v["seconds"]]
         for k, v in r["chunks"].items()])

    def pol(rows, title):
        return stats.table([title, "post ms", "posts", "tokens/post", "max/post",
                            "first token ms", "mean token delay ms", "max delay ms"],
                       [[x["policy"], x["post_ms"], x["posts"], x["tokens_per_post"],
                         x["max_tokens_per_post"], x["first_token_ms"], x["mean_delay_ms"],
                         x["max_delay_ms"]] for x in rows])

    return "\n".join([
        f"## 4. Time to first token and chunking ({r['model']}, endpoint modifier "
        f"{r['modifier']})", ttft, "", chunks, "",
        pol(r["policies_here"], f"policy, this engine ({r['engine_ms_per_token']:.0f} ms/token"
                                f", {r['long_tokens']} tokens)"), "",
        pol(r["policies_gpu_5ms"], "policy, GPU-like timeline (5 ms/token, 512 tokens)"),
        "delay = from the engine producing a token to its post completing",
        stats.ratio_lines(r["ratios"]),
    ])


if __name__ == "__main__":
    runner.script_main("ttft_chunks", __doc__, add_args, measure, report)
