"""Compose docs/BENCHMARKS.md and docs/concurrency.png from run_all's results."""

from __future__ import annotations

import importlib
from pathlib import Path

from bench import stats

TITLES = {
    "handler_overhead": "1. Handler overhead",
    "worker_loop": "2. Worker loop overhead",
    "concurrency": "3. Concurrency scaling",
    "ttft_chunks": "4. Time to first token, chunking",
    "cold_start": "5. Cold start",
    "cpu_settings": "6. CPU settings",
    "openai_route": "7. The OpenAI route",
    "first_text": "8. First text under load",
}
ORDER = list(TITLES)

# Decode reads every weight once per step: one sequence's tokens/s is at most
# memory bandwidth / bytes of weights. (KV cache reads add to it; batching shares
# the weight reads between sequences, which is why throughput grows with batch.)
GPUS = [("H100 SXM", 3.35e12), ("H200", 4.8e12)]
PAPER_MODELS = [
    ("SmolLM2-135M-Instruct, bf16 (the kit's default)", 0.135e9, 2),
    ("a 7-8B model (Llama-3.1-8B, Qwen2.5-7B), bf16", 8.0e9, 2),
    ("a 7-8B model, FP8", 8.0e9, 1),
    ("a 70B model, FP8 (fits one H200)", 70.6e9, 1),
]


def _blocks(text: str) -> str:
    """A report's plain lines as Markdown: tables kept, ratio lines as a list."""
    out, kind, block = [], None, []
    for line in text.splitlines():
        k = "table" if line.startswith("|") else "ratio" if line.startswith("ratio ") else \
            "blank" if not line.strip() else "text"
        if k != kind or k == "text":
            if block:
                out.append("\n".join(block))
            block, kind = [], k
        if k == "ratio":
            block.append(f"- {line}")
        elif k != "blank":
            block.append(line)
    if block:
        out.append("\n".join(block))
    return "\n\n".join(b for b in out if b)


def _section(name: str, res: dict, run: dict) -> str:
    mod = importlib.import_module(f"bench.{name}")
    body = _blocks(mod.report(res))
    body = body.replace("## ", "### ", 1)
    cmd = run["commands"][name]
    when = f" (ran {res['ran_at']})" if res.get("ran_at") else ""
    machine = res.get("machine", {}).get("description")
    if machine and machine != run["machine"]["description"]:  # kept from another machine
        when = when[:-1] + f", on {machine})" if when else f" (on {machine})"
    return f"{body}\n\nReproduce: `{cmd}`{when}"


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def gpu_paper(results: dict) -> str:
    rows = []
    for name, params, bytes_per in PAPER_MODELS:
        gb = params * bytes_per / 1e9
        row = [name, f"{gb:.1f}"]
        for _, bw in GPUS:
            tps = bw / (params * bytes_per)
            row += [_fmt_rate(tps), f"{1e3 / tps:.2f}"]
        rows.append(row)
    headers = ["model", "weights GB"]
    for g, bw in GPUS:
        headers += [f"{g} ({bw / 1e12:.2f} TB/s) tok/s", "ms/token"]
    table = stats.table(headers, rows)

    ho = results.get("handler_overhead", {})
    wl = results.get("worker_loop", {})
    per_chunk = ho.get("micro", {}).get("per_chunk_us")
    per_job = ho.get("micro", {}).get("per_job_us")
    post_us = wl.get("post", {}).get("per_post_us")
    ms_8b_h200 = 1e3 * 8.0e9 * 2 / 4.8e12
    lines = [
        "### The physical limit on a GPU, on paper",
        "Decoding one sequence reads every weight once per token, so its speed is bounded "
        "by memory bandwidth: tokens/s <= bandwidth / bytes of weights (KV-cache reads only "
        "lower it). Batching shares each weight read between the sequences of a step, so "
        "aggregate throughput grows with concurrency until compute becomes the limit; that "
        "is what benchmark 3 measures.",
        table,
        "For the 135M default the bound (under 0.1 ms per token) is far below what one "
        "engine step costs in kernel launches and vLLM's per-step CPU work, so that model "
        "is overhead-bound, not bandwidth-bound. For a 7-8B model the bound is about "
        f"{ms_8b_h200:.1f} ms per token on an H200 (4.8 ms on an H100).",
    ]
    if per_chunk is not None:
        lines.append(
            f"The kit's own cost per token is far below that. The handler spends "
            f"{per_chunk:.1f} us per streamed token (engine output) and "
            f"{per_job / 1e3:.1f} ms once per job (validation, chat template, tokenizer): "
            f"{per_chunk / (ms_8b_h200 * 1e3) * 100:.3f}% of a {ms_8b_h200:.1f} ms token.")
    if post_us is not None:
        lines.append(
            f"The SDK worker loop posts each chunk over HTTP: {post_us:.0f} us per post to "
            "the local endpoint here (runpod's own rp_http.stream_result, timed). That is "
            f"{post_us / (ms_8b_h200 * 1e3) * 100:.0f}% of a {ms_8b_h200:.1f} ms token, but it "
            "is not on the engine's path: vLLM keeps generating in its own process while "
            "the worker awaits a post, and the handler's DELTA outputs merge what arrived "
            "meanwhile into the next chunk. A slower uplink (tens of ms per post to the "
            "platform) makes chunks bigger, not decoding slower; see benchmark 4. What it "
            "does cost is CPU in the worker's one event loop, which also runs vLLM's output "
            "processing: with a post per token, 16 streams at 300 tokens/s would ask for "
            f"{16 * 300 * post_us / 1e6:.1f} s of posting per second at this per-post cost. "
            "DELTA alone would degrade gracefully (the loop saturates, chunks grow); the "
            "handler's gap between posts (100 ms, doubling per chunk to 500 ms; benchmark "
            "4) caps it by design: once an answer runs past a second, 16 streams post at "
            f"most 32 times a second, {32 * post_us / 1e6 * 100:.1f}% of a core here.")
    return "\n\n".join(lines)


def findings(results: dict) -> str:
    """What the figures say about the kit, in words, with this run's numbers."""
    items = []
    wl = results.get("worker_loop", {})
    short = {s["modifier"]: s["rows"] for s in wl.get("short", [])}
    if short:
        waits = "; ".join(
            f"modifier {m}: p50/p95 {r['kit loop']['wait_p50_ms']:.0f}/"
            f"{r['kit loop']['wait_p95_ms']:.0f} ms against {r['SDK loop']['wait_p50_ms']:.0f}/"
            f"{r['SDK loop']['wait_p95_ms']:.0f} ms, {r['kit loop']['jobs_s']:.2f} short "
            f"jobs/s against {r['SDK loop']['jobs_s']:.2f}" for m, r in sorted(short.items()))
        items.append(
            "**The SDK's job-fetch loop idles up to a second between jobs; the kit's does "
            "not.** In runpod 1.10 (and 1.12), `JobScaler.get_jobs` sleeps 1 s whenever it "
            "thinks the worker is full, and a job just taken counts twice until `run_jobs` "
            "(which looks every 0.1 s) starts it. The kit's loop (llmkit/runtime/worker_loop.py, "
            "which the runtime's serve() installs) counts a job once, fetches when a job ends "
            "and starts "
            "it at once; the rest is the SDK's (docs/WORKER_LOOP.md). Queue wait from a "
            f"slot freeing to the job being taken, kit's loop against the SDK's: {waits}.")
    tt = results.get("ttft_chunks", {}).get("ttft", {})
    if tt:
        eng = tt.get("engine (raw vLLM)", {}).get("p50_ms")
        hd = tt.get("handler (in process)", {}).get("p50_ms")
        cl = tt.get("endpoint client (/run -> /stream)", {}).get("p50_ms")
        if None not in (eng, hd, cl):
            items.append(
                f"**Time to first token.** The engine's first token takes {eng:.0f} ms, the "
                f"handler's {hd:.0f} ms (the same within noise: its own code takes under a "
                f"millisecond), and a client of the local endpoint sees it after {cl:.0f} "
                "ms. The difference is the queue and HTTP hops: the kit's worker loop "
                "starts a fetched job at once, where the SDK's `run_jobs` looks at its job "
                "queue every 0.1 s (50 ms on average; benchmark 2).")
    ch = results.get("ttft_chunks", {})
    if ch.get("policies_gpu_5ms"):
        gpu = {(x["policy"], x["post_ms"]): x for x in ch["policies_gpu_5ms"]}
        alone = gpu.get(("DELTA alone (STREAM_INTERVAL_MS=0)", 2.0), {})
        off = gpu.get(("official 1,3,9,27,50", 2.0), {})
        flat = gpu.get(("kit: DELTA + 100 ms between posts", 2.0), {})
        kit = gpu.get(("kit: DELTA + 100 -> 500 ms between posts", 2.0), {})
        here = {x["policy"]: x for x in ch.get("policies_here", [])
                if x["post_ms"] == 2.0}
        off_here = here.get("official 1,3,9,27,50", {})
        ep = ch.get("chunks", {}).get("endpoint (local posts)", {})
        items.append(
            "**Chunking.** The handler streams vLLM DELTA outputs. The first text leaves "
            "at once; after it the gap between a job's chunks starts at "
            "STREAM_INTERVAL_MS (100 ms) and doubles per chunk up to STREAM_INTERVAL_MAX_MS "
            "(500 ms); tokens that arrive meanwhile merge into the next chunk. Through "
            "the local endpoint here "
            f"({ch.get('engine_ms_per_token', 0):.0f} ms per token) a "
            f"{ch.get('long_tokens')}-token answer went out in {ep.get('chunks')} posts "
            f"({ep.get('tokens_per_chunk', 0):.1f} tokens per chunk, first chunk "
            f"{ep.get('first_chunk_tokens')} token)"
            + ("; a token takes longer than the largest gap here, so nearly every token "
               "is its own chunk" if ch.get("engine_ms_per_token", 0) > 500 else "")
            + ". Replayed on a GPU-like timeline (512 "
            f"tokens, 5 ms each) with 2 ms posts: DELTA alone makes {alone.get('posts')} "
            f"posts; the official worker's 1,3,9..50 makes {off.get('posts')} but delays "
            f"tokens {off.get('mean_delay_ms', 0):.0f} ms on average, "
            f"{off.get('max_delay_ms', 0):.0f} ms at worst; the kit's policy makes "
            f"{kit.get('posts')} posts with tokens {kit.get('mean_delay_ms', 0):.0f} ms late "
            f"on average, {kit.get('max_delay_ms', 0):.0f} ms at worst (a flat 100 ms gap: "
            f"{flat.get('posts')} posts, {flat.get('mean_delay_ms', 0):.0f} ms on average). "
            "So on a fast engine the kit makes fewer posts than the official policy and "
            "holds text somewhat longer; STREAM_INTERVAL_MAX_MS=100 gives the flat gap. "
            "Fewer posts are worth the wait on a CPU: the worker's posts and the engine's "
            "OpenMP threads share the cores, and each post costs decode speed "
            "(benchmark 2). The delay is "
            "bounded by the largest gap whatever the engine's speed, while a policy that "
            "counts tokens holds text back longer the slower the engine: on this CPU's "
            f"timeline the official policy's mean delay is "
            f"{off_here.get('mean_delay_ms', 0) / 1e3:.1f} s. Posts are capped at 2 per "
            "second per job after the first second (STREAM_INTERVAL_MS=0 gives DELTA "
            "alone).")
    items += first_text_findings(results.get("first_text", {}))
    cold = [x for x in results.get("cold_start", {}).get("cases", []) if x["path"] == "handler"]
    if cold:
        kit = ", ".join(f"{x['kit_s']:.1f} s of {x['ready_s']:.0f} s ({x['model']})"
                        for x in cold)
        items.append(
            f"**Cold start.** What the kit adds to vLLM's own start: {kit}. The runpod SDK "
            "takes over a second to import (about 1.4 s of it is py-cpuinfo, which "
            "`runpod.serverless.utils.rp_debugger` runs at import time to read the CPU's "
            "name). The runtime's serve() imports it in a thread while vLLM starts "
            "its engine, and keeps it out of the module top, which vLLM's spawned engine "
            "processes import again; so the SDK costs only the part of its import that "
            "outlasts the engine start. handler.py itself imports in milliseconds. The "
            "engine start is vLLM's (a spawned engine process and a spawned CPU worker, "
            "each importing torch and vLLM).")
        raw = {x["model"]: x["ready_s"] for x in results["cold_start"]["cases"]
               if x["path"] == "raw vLLM"}
        pairs = [f"handler {x['ready_s']:.1f} s against raw vLLM {raw[x['model']]:.1f} s "
                 f"({x['model']})" for x in cold if x["model"] in raw]
        if pairs:
            items[-1] += (" Ready times, one run each: " + "; ".join(pairs) + ". One start "
                          "varies by several seconds from run to run on this VM.")
    cpu = results.get("cpu_settings", {})
    if cpu.get("rows"):
        rows = {r["setting"]: r for r in cpu["rows"]}
        f32, b16 = rows.get("float32/all"), rows.get("bfloat16/all")
        text = f"**CPU settings.** Fastest at batch 16: {cpu['fastest']}."
        if f32 and b16:
            text += (f" float32 runs {f32['b16_tok_s'] / b16['b16_tok_s']:.1f}x bfloat16 at "
                     "batch 16 on this CPU without native bf16, so float32 is the CPU "
                     "default.")
        auto = rows.get("float32/auto")
        if f32 and auto:
            text += (" OpenMP on every core (the handler sets VLLM_CPU_OMP_THREADS_BIND to "
                     "them on a CPU) against vLLM's auto binding, which keeps one core for "
                     "the scheduler and the API process: "
                     f"x{f32['b1_tok_s'] / auto['b1_tok_s']:.2f} at batch 1, "
                     f"x{f32['b16_tok_s'] / auto['b16_tok_s']:.2f} at batch 16, so every core "
                     "is the CPU default. vLLM's scheduler process spins on a core while the "
                     "engine runs (about 85% of one, seen with top), so several engines on "
                     "one machine are better off with auto: the local endpoint passes "
                     "VLLM_CPU_OMP_THREADS_BIND=auto to its workers when it runs more than "
                     "one.")
        items.append(text)
    ho = results.get("handler_overhead", {}).get("micro")
    if ho:
        items.append(
            f"**The handler's own code** costs {ho['per_job_us'] / 1e3:.1f} ms per job, "
            f"mostly the chat template and tokenizer, and {ho['per_chunk_us']:.1f} us per "
            "streamed token. vLLM 0.32 warns that passing `{\"prompt_token_ids\": ...}` to "
            "`generate()` is deprecated (\"Passing raw prompts to InputProcessor\"); it "
            "still works, but a later vLLM will need the handler to change.")
    if not items:
        return ""
    return "### What the figures say\n\n" + "\n\n".join(f"- {x}" for x in items)


def first_text_findings(ft: dict) -> list[str]:
    kit = (ft.get("timeline") or {}).get("kit worker", {}).get("steps_ms", {})
    if not ft.get("rows") or None in (kit.get("engine-in"), kit.get("engine-out"),
                                      kit.get("client")):
        return []
    n = max(ft["levels"])
    k, v = ft["rows"][f"{n}|kit worker"], ft["rows"][f"{n}|vllm serve proxy"]
    return [
        f"**First text under load.** {n} streams submitted at once: the kit's first text "
        f"reached the client after {k['first_p50_ms']:.0f} ms (p50; p95 "
        f"{k['first_p95_ms']:.0f} ms), against {v['first_p50_ms']:.0f} ms (p95 "
        f"{v['first_p95_ms']:.0f} ms) through a worker that forwards to `vllm serve` on the "
        f"same flags, as Runpod's official worker does. In the kit's worker a job waited "
        f"{kit['engine-in']:.0f} ms before vLLM had its request (the take, the task's "
        f"start, the chat template) and {kit['client'] - kit['engine-out']:.0f} ms after "
        f"vLLM's first output (the stream post and the client's read); the other "
        f"{kit['engine-out'] - kit['engine-in']:.0f} ms were vLLM's. vLLM runs the first "
        "request of a burst alone in its first step and the rest together in the next, "
        "behind either worker, so a burst's first text costs about one prefill of all its "
        "prompts (docs/WORKER_LOOP.md has the timeline and what a smaller "
        "MAX_NUM_BATCHED_TOKENS does to it)."]


def targets(results: dict) -> str:
    rows = []
    for name in ORDER:
        for r in results.get(name, {}).get("ratios", []):
            if r["target"] is None:
                continue
            sign = "<=" if r.get("at_most") else ">="
            rows.append([TITLES[name], r["name"], stats.fmt(r["value"], 3),
                         f"{sign} {r['target']:.2f}",
                         r["verdict"], f"`{results['_run']['commands'][name]}`"])
    return stats.table(["benchmark", "figure", "measured", "target", "verdict", "command"], rows)


def compose(results: dict) -> str:
    run = results["_run"]
    m = run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    starts = ", ".join(f"{k} {v:.0f} s" for k, v in run.get("engine_starts_s", {}).items())
    parts = [
        "# Benchmarks",
        "Generated by `make bench` (`.venv/bin/python -m bench.run_all --write-docs`); "
        "rerun it rather than editing this file. Each script also runs alone (the "
        "`Reproduce` lines) and takes `--quick` (tiny model, seconds of work), `--model "
        "SPEC` and `--json OUT`. Variants are measured side by side in one run, "
        "alternating (A,B,B,A...), and reported as medians.",
        "\n".join([
            f"- run: {run['date']}, {run['total_s'] / 60:.1f} min in all"
            + (" (--quick: a smoke test, not figures to quote)" if run["quick"] else "")
            + (f"; kept from an earlier run: {', '.join(run['merged'])} (each section "
               "says when it ran)" if run.get("merged") else ""),
            f"- machine: {m['description']}",
            f"- software: Python {m['python']}, {versions}",
            f"- model: {run['model']}; sampling: greedy, min_tokens = max_tokens, so every "
            "job generates the same number of tokens; prompts: 16 short chat questions "
            "(bench/workload.py), chat-templated",
            "- engine: the runtime's engine settings (llmkit/runtime/config.py) at their "
            "defaults, except ENABLE_PREFIX_CACHING=false, so that a prompt repeated across "
            "variants costs the same every time (cold start uses the defaults untouched)",
            *([f"- engines, ready after launch (started side by side, so not cold-start "
               f"figures): {starts}"] if starts else []),
        ]),
        "Reading the figures: this is a small shared VM, and back-to-back comparisons of "
        "identical work vary by about +-10% here (compare the raw and handler columns at "
        "one job, which run the same engine). Ratios above 1 are that noise, not a gain. "
        "Benchmark 1's side-by-side design (both jobs in the same engine steps) resolves "
        "differences of a fraction of a percent; the micro-measurements of the handler's "
        "own code and of one HTTP post are exact costs.",
        "### Targets",
        targets(results),
    ]
    for name in ORDER:
        if name in results:
            parts.append(_section(name, results[name], run))
            if name == "concurrency":
                parts.append("![Throughput against concurrency: handler, endpoint and raw "
                             "vLLM](concurrency.png)")
        elif name in run.get("failed", []):
            parts.append(f"### {TITLES[name]}\n\nFailed to run in this pass.")
    parts.append(gpu_paper(results))
    parts.append(findings(results))
    return "\n\n".join(p for p in parts if p) + "\n"


def write(results: dict, docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / "BENCHMARKS.md").write_text(compose(results))
    if "concurrency" in results:
        from bench import concurrency

        conc = dict(results["concurrency"])
        conc["machine"] = results["_run"]["machine"]
        concurrency.plot(conc, docs_dir / "concurrency.png", results["_run"]["model"])
