"""7. The OpenAI route: the `openai` client's path against the native API and raw vLLM.

The same prompts and work (greedy, min_tokens = max_tokens), streaming, three ways:
raw vLLM (the in-process engine's generate(), as in benchmark 1), the native API
through the local endpoint (/run, then /stream polled, as the kit's clients do) and
the OpenAI route through the same endpoint and worker (POST
/openai/v1/chat/completions with "stream": true, its server-sent events read as they
arrive, as the openai client reads them). Clients run closed loops (1 and 8 at once);
variants alternate.

    .venv/bin/python -m bench.openai_route [--quick] [--model SPEC] [--json OUT]
"""

from __future__ import annotations

import json

from bench import runner, stats, workload
from bench.endpoint import BenchEndpoint
from llmkit.endpoint.harness import EndpointError

TARGET = 0.95
VARIANTS = ["raw vLLM (in process)", "native API (/run + /stream)",
            "OpenAI route (SSE stream)"]


async def served_model(ep: BenchEndpoint) -> str:
    """The name the route serves (OPENAI_SERVED_MODEL_NAME_OVERRIDE, else the model id)."""
    async with ep.session.get(f"{ep.url}/openai/v1/models") as r:
        body = await r.json()
        if r.status != 200:
            raise EndpointError(f"/openai/v1/models answered {r.status}: {body}")
    return body["data"][0]["id"]


async def openai_job(ep: BenchEndpoint, model: str, i: int, tokens: int,
                     base: str | None = None) -> workload.JobStats:
    """One streamed chat completion through the OpenAI route (``base``: another server's
    /v1, e.g. a load-balancing worker's)."""
    native = workload.job_input(i, tokens)  # the same prompt and sampling as the native job
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": native["messages"], **native["sampling_params"]}
    st = workload.JobStats(start=workload.now())
    async with ep.session.post(f"{base or ep.url + '/openai/v1'}/chat/completions",
                               json=body) as r:
        if r.status != 200:
            raise EndpointError(f"the OpenAI route answered {r.status}: {await r.text()}")
        async for t, events in workload.sse_reads(r):
            texts = []
            for event in events:
                payload = event.removeprefix(b"data: ")
                if payload == b"[DONE]":
                    continue
                obj = json.loads(payload)
                if "error" in obj:
                    raise EndpointError(f"error event: {obj['error']}")
                if obj.get("usage"):
                    st.tokens = obj["usage"]["completion_tokens"]
                texts += [ch["delta"].get("content") or "" for ch in obj.get("choices", [])]
            if any(texts):
                if st.first is None:
                    st.first = t
                st.chunks += 1  # a network read that carried text
                st.chunk_times.append(t)
                st.texts.append("".join(texts))
    st.end = workload.now()
    if st.tokens != tokens:
        raise EndpointError(f"the OpenAI route generated {st.tokens} tokens, not {tokens}")
    return st


def add_args(p) -> None:
    p.add_argument("--tokens", type=int, default=None, help="tokens per job (64; quick 32)")
    p.add_argument("--reps", type=int, default=3, help="rounds per variant (3)")
    p.add_argument("--clients", default=None,
                   help="closed-loop clients at once, comma list (1,8; quick 1,2)")


def measure(ctx: runner.Context, args) -> dict:
    tokens = args.tokens or (32 if args.quick else 64)
    clients = [int(x) for x in (args.clients or ("1,2" if args.quick else "1,8")).split(",")]
    # One worker with room for every client: the SDK's fetch loop idles up to 1 s
    # between jobs when it is full (benchmark 2), which would blur both endpoint paths.
    modifier = 2 if args.quick else 16
    ip = ctx.inproc()
    ep = ctx.endpoint(modifier)
    model = ctx.run(served_model(ep))

    def runner(variant: str):
        if variant.startswith("raw"):
            return lambda i: ip.raw_job(workload.job_input(i, tokens))
        if variant.startswith("native"):
            return lambda i: ep.stream_job(workload.job_input(i, tokens))
        return lambda i: openai_job(ep, model, i, tokens)

    async def go():
        texts = {v: await runner(v)(0) for v in VARIANTS}  # warm-up, and the same answer?
        rounds = await workload.rounds_by_clients(runner, VARIANTS, clients, args.reps)
        return {v: st.text for v, st in texts.items()}, rounds

    texts, rounds = ctx.run(go())
    rows, ratios = workload.round_rows(rounds), []
    for n in clients:
        oa, native, raw = (rows[f"{n} client(s): {v}"]["tok_s"] for v in
                           (VARIANTS[2], VARIANTS[1], VARIANTS[0]))
        ratios.append(stats.ratio(f"OpenAI route / native API tok/s, {n} client(s)",
                              oa / native, TARGET))
        ratios.append(stats.ratio(f"OpenAI route / raw vLLM tok/s, {n} client(s)", oa / raw, None))
    same = texts[VARIANTS[1]] == texts[VARIANTS[2]]
    return {"tokens_per_job": tokens, "reps": args.reps, "modifier": modifier,
            "served_model": model, "rows": rows, "ratios": ratios,
            "same_text_native_openai": same, "texts": texts}


def report(r: dict) -> str:
    rows = [[x["clients"], x["variant"], x["tok_s"], x["job_s"] * 1e3, x["ttft_ms"],
             x["chunks"]] for x in r["rows"].values()]
    return "\n".join([
        f"## 7. The OpenAI route ({r['model']}, {r['tokens_per_job']} tokens/job, streaming, "
        f"{r['reps']} rounds per variant, CONCURRENCY_MODIFIER={r['modifier']})",
        stats.table(["clients", "path", "tok/s", "job ms", "first text ms", "reads/job"], rows),
        "tok/s: all clients' tokens over the round's wall time; first text: submit -> first "
        "text at the client; reads/job: deliveries that carried text (SSE reads for the "
        "route, /stream polls for the native API, engine outputs for raw vLLM)",
        "greedy answer to the first prompt, native API and OpenAI route: "
        + ("the same text" if r["same_text_native_openai"] else "different texts (the "
           "route applies vLLM's chat template, the native API the handler's)"),
        stats.ratio_lines(r["ratios"]),
    ])


if __name__ == "__main__":
    runner.script_main("openai_route", __doc__, add_args, measure, report)
