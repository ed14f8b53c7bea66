"""Parallelism on one machine: the kit's engine at tensor parallel 1, 2 and pipeline
parallel 2, side by side. Each case starts in a fresh process, as a worker would
(llmkit.runtime.engine() with TENSOR_PARALLEL_SIZE / PIPELINE_PARALLEL_SIZE set), and the
cases alternate over the rounds. It reports the engine's start and its decode tok/s at
1 and 8 concurrent requests.

The model must split: the tiny model has 2 attention heads and 2 layers (SmolLM2-135M
has 9 heads, so tensor parallelism cannot split it). On a 2-core machine expect no gain:
each rank gets one core, and the ranks talk through shared memory each step. The figure
shows that the path works, and what it costs; on GPUs it is how a model too big for one
fits at all.

    .venv/bin/python -m bench.parallel [--rounds 2] [--tokens 128] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {"TP 1": {}, "TP 2": {"TENSOR_PARALLEL_SIZE": "2"},
         "PP 2": {"PIPELINE_PARALLEL_SIZE": "2"}}
BATCHES = (1, 8)


def child(tokens: int) -> None:
    """In the fresh process: start the engine, decode, print one JSON line."""
    import asyncio

    from llmkit.runtime import engine, shutdown_engine
    from llmkit.runtime.vllm_api import SamplingParams

    started = time.monotonic()
    running = engine()
    figures = {"start_s": time.monotonic() - started}
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)

    async def one(i, batch):
        async for out in running.generate(f"Request {i} of {batch}: the", params, f"{batch}-{i}"):
            last = out
        return len(last.outputs[0].token_ids)

    async def decode(batch):
        await one(-1, batch)  # warm
        begun = time.monotonic()
        counts = await asyncio.gather(*(one(i, batch) for i in range(batch)))
        return sum(counts) / (time.monotonic() - begun)

    async def every_batch():  # one event loop: vLLM's engine stays with the loop it met
        for batch in BATCHES:
            figures[f"tok_s_{batch}"] = await decode(batch)

    asyncio.run(every_batch())
    print("FIGURES " + json.dumps(figures), flush=True)
    shutdown_engine()  # every rank: they hold this process's output pipe open


def run_case(name: str, model: str, tokens: int) -> dict:
    env = {**os.environ, **CASES[name], "MODEL": model, "MAX_MODEL_LEN": "1024",
           "VLLM_LOGGING_LEVEL": "WARNING", "LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "bench.parallel", "--child",
                           "--tokens", str(tokens)], env=env, capture_output=True, text=True,
                          timeout=900)
    lines = [x for x in done.stdout.splitlines() if x.startswith("FIGURES ")]
    if not lines:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("FIGURES "))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parallel",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model", default=None, help="a model folder (the tiny model)")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.tokens)
        return 0
    from llmkit import tiny_model

    model = args.model or str(tiny_model.build())
    seen = {name: [] for name in CASES}
    for round_ in range(args.rounds):
        for name in CASES:
            figures = run_case(name, model, args.tokens)
            seen[name].append(figures)
            print(f"round {round_ + 1}/{args.rounds} {name}: " + ", ".join(
                f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    print(f"\n{os.cpu_count()} cores, {args.tokens} tokens per request, median of "
          f"{args.rounds} rounds\n")
    print("| case | engine start (s) | tok/s, 1 request | tok/s, 8 at once | vs TP 1 (8 at once) |")
    print("|---|---|---|---|---|")
    base = _median([f["tok_s_8"] for f in seen["TP 1"]])
    for name, runs in seen.items():
        start = _median([f["start_s"] for f in runs])
        one, eight = (_median([f[f"tok_s_{b}"] for f in runs]) for b in BATCHES)
        print(f"| {name} | {start:.1f} | {one:.0f} | {eight:.0f} | {eight / base:.2f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(seen, out, indent=1)
    return 0


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1:
                                                                        len(values) // 2 + 1]) / 2


if __name__ == "__main__":
    sys.exit(main())
