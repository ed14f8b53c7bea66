"""1. Handler overhead: tokens/s streamed through the exported handler vs vLLM direct.

Same process, same engine (the handler's own, from its ENGINE_ARGS), same prompts,
same SamplingParams (built by the handler's own sampling_params(), greedy,
min_tokens = max_tokens). Raw vLLM gets the prompt already tokenized, so the
handler's input validation, chat templating and tokenization count as its overhead.

Two designs, both in the run:
- side by side: each round submits raw and handler jobs (stream and normal) at the
  same moment, with the same prompt, so they share every engine step and any drift
  of a shared machine hits them alike (a fifth, longer "pacer" request makes them
  enter the batch at the same step); the ratio is the median of per-round ratios;
- one at a time: raw and handler stream jobs alternate (A,B,B,A...), each alone.

Also two noise-free micro-measurements of the handler's own code: its per-job cost
(validation, chat template, tokenizer, SamplingParams) and its per-chunk cost
(with a stand-in engine that yields instantly).

    .venv/bin/python -m bench.handler_overhead [--quick] [--model SPEC] [--json OUT]
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from bench import engine, runner, stats, workload

TARGET = 0.97
TOGETHER = ["raw stream", "handler stream", "raw normal", "handler normal"]
ALONE = ["raw stream", "handler stream"]


def add_args(p) -> None:
    p.add_argument("--tokens", type=int, default=None, help="tokens per job (64; quick 32)")
    p.add_argument("--reps", type=int, default=None,
                   help="rounds of each design (4; quick 2)")


class _FakeEngine:
    """Yields n one-token deltas instantly: isolates the handler's cost per engine output."""

    def __init__(self, real, n: int) -> None:
        self.model_config = real.model_config
        self.get_tokenizer = real.get_tokenizer
        self.n = n

    async def generate(self, prompt, params, request_id):
        out = SimpleNamespace(outputs=[SimpleNamespace(text=" tok", token_ids=[1],
                                                       finish_reason=None, stop_reason=None)],
                              finished=False)
        for i in range(self.n):
            if i == self.n - 1:
                out = SimpleNamespace(outputs=out.outputs, finished=True)
            yield out


async def _micro(ip: engine.InProcess) -> dict:
    from llmkit.runtime import vllm_engine

    inp = workload.job_input(0, 64)
    n = 200
    t0 = workload.now()
    for _ in range(n):
        ip.prepare(inp)
    per_job_us = (workload.now() - t0) / n * 1e6

    chunks = 20000
    fake = _FakeEngine(ip.engine, chunks)
    t0 = workload.now()
    async for _ in fake.generate(None, None, None):
        pass
    bare = workload.now() - t0
    real_engine = vllm_engine.engine
    vllm_engine.engine = lambda: fake
    try:
        t0 = workload.now()
        async for _ in ip.job({"id": "micro", "input": inp}):
            pass
        through = workload.now() - t0
    finally:
        vllm_engine.engine = real_engine
    return {"per_job_us": per_job_us, "per_chunk_us": (through - bare) / chunks * 1e6}


def _rows(runs: dict) -> dict:
    return {v: {"tok_s": stats.median([s.tokens / s.latency for s in sts]),
                "latency_s": stats.median([s.latency for s in sts]),
                "ttft_ms": stats.median([s.ttft * 1e3 for s in sts]),
                "chunks": stats.median([s.chunks for s in sts]), "jobs": len(sts),
                "job_ms": [round(s.latency * 1e3, 1) for s in sts]}
            for v, sts in runs.items()}


def _paired(runs: dict, mode: str) -> tuple[float, float]:
    """Median over rounds of handler/raw tok/s, and of the handler's extra ms per job."""
    raw, hd = runs[f"raw {mode}"], runs[f"handler {mode}"]
    pairs = list(zip(raw, hd, strict=True))
    return (stats.median([a.latency / b.latency for a, b in pairs]),
            stats.median([(b.latency - a.latency) * 1e3 for a, b in pairs]))


def measure(ctx: runner.Context, args) -> dict:
    tokens = args.tokens or (32 if args.quick else 64)
    reps_together = args.reps or (2 if args.quick else 4)
    reps_alone = args.reps or (2 if args.quick else 4)
    ip = ctx.inproc()

    async def job(variant: str, inp: dict) -> workload.JobStats:
        if variant.startswith("raw"):
            st = await ip.raw_job(inp, ip.prepare(inp))
            if st.tokens != tokens:
                raise RuntimeError(f"raw vLLM made {st.tokens} tokens, not {tokens}")
            return st
        return await ip.handler_job(inp)

    async def go():
        micro = await _micro(ip)
        # Warm-up: the first requests allocate buffers; not measured.
        await ip.raw_job(workload.job_input(0, 8))
        await ip.handler_job(workload.job_input(0, 8))
        together = {v: [] for v in TOGETHER}
        for rep in range(reps_together):
            # A pacer request keeps the engine mid-step while the four are submitted, so
            # all four join the batch at the same step boundary (an idle engine would
            # start a step for whichever arrived first).
            pacer = asyncio.ensure_future(ip.raw_job(workload.job_input(rep + 8, tokens + 8)))
            await asyncio.sleep(0.02)
            order = TOGETHER if rep % 2 == 0 else TOGETHER[::-1]  # who submits first
            sts = await asyncio.gather(*(
                job(v, workload.job_input(rep, tokens, v.endswith("stream"))) for v in order))
            await pacer
            for v, st in zip(order, sts, strict=True):
                together[v].append(st)
        alone = {v: [] for v in ALONE}
        for i, v in enumerate(workload.interleave(ALONE, reps_alone)):
            alone[v].append(await job(v, workload.job_input(i // 2, tokens)))
        return micro, together, alone

    micro, together, alone = ctx.run(go())
    out = {"tokens_per_job": tokens, "reps_together": reps_together, "reps_alone": reps_alone,
           "together": _rows(together), "alone": _rows(alone), "micro": micro,
           "engine_args": _engine_args(ip), "ratios": []}
    for design, runs, modes in (("side by side", together, ("stream", "normal")),
                                ("one at a time", alone, ("stream",))):
        rows = out["together" if design == "side by side" else "alone"]
        for mode in modes:
            ratio, extra_ms = _paired(runs, mode)
            rows[f"handler {mode}"]["paired_ratio"] = ratio
            rows[f"handler {mode}"]["paired_extra_ms"] = extra_ms
            # The target is judged side by side: one-at-a-time pairs of identical work
            # differ by +-5-10% on a shared VM, which hides a 3% effect either way.
            target = TARGET if (mode == "stream" and design == "side by side") else None
            note = "" if design == "side by side" else "drift-prone; see side by side"
            out["ratios"].append(stats.ratio(f"handler/raw tok/s, {mode} mode, {design}", ratio,
                                             target, note))
    return out


def _engine_args(ip: engine.InProcess) -> dict:
    return {k: v for k, v in ip.settings.engine_args.items() if v is not None and k != "model"}


def report(r: dict) -> str:
    def tab(rows):
        return stats.table(["variant", "tok/s", "job ms", "TTFT ms", "chunks/job",
                            "handler/raw (paired)", "handler extra ms/job (paired)"],
                       [[v, x["tok_s"], x["latency_s"] * 1e3, x["ttft_ms"], x["chunks"],
                         stats.fmt(x.get("paired_ratio"), 3),
                         stats.fmt(x.get("paired_extra_ms"), 1)]
                        for v, x in rows.items()])

    m = r["micro"]
    return "\n".join([
        f"## 1. Handler overhead ({r['model']}, {r['tokens_per_job']} tokens/job)",
        f"side by side: {r['reps_together']} rounds, the four jobs of a round submitted at "
        "once (same prompt, same engine steps)",
        tab(r["together"]),
        f"one at a time: {r['reps_alone']} jobs per variant, alternating",
        tab(r["alone"]),
        f"handler code alone: {m['per_job_us']:.0f} us per job (validation, chat template, "
        f"tokenizer, SamplingParams), {m['per_chunk_us']:.2f} us per streamed token",
        stats.ratio_lines(r["ratios"]),
    ])


if __name__ == "__main__":
    runner.script_main("handler_overhead", __doc__, add_args, measure, report)
