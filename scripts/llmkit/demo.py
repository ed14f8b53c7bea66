"""`make demo`: stream an answer from the exported handler on the default model.

    python -m llmkit.demo [--model SPEC] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from llmkit import handler_module, models
from llmkit.paths import REPO_ROOT

SAMPLE_PROMPT = "What is the capital of France? Answer in one sentence."


async def stream_answer(handler, prompt: str, max_tokens: int) -> int:
    job = {"id": "demo", "input": {
        "messages": [{"role": "user", "content": prompt}],
        "answerType": "stream",
        "sampling_params": {"max_tokens": max_tokens, "temperature": 0},
    }}
    chunks, started = 0, time.perf_counter()
    async for chunk in handler(job):
        if "error" in chunk:
            print(f"\nerror: {chunk['error']}", file=sys.stderr)
            return 1
        print(chunk["text"], end="", flush=True)
        chunks += 1
    print(f"\n[{chunks} chunks in {time.perf_counter() - started:.1f} s]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.demo", description=__doc__)
    parser.add_argument("--model", default=None, help="default: $MODEL or the embedded model")
    parser.add_argument("--prompt", default=SAMPLE_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--handler", default=str(REPO_ROOT / "build" / "handler.py"))
    args = parser.parse_args(argv)
    try:
        os.environ["MODEL"] = str(models.resolve(args.model))
    except models.ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    os.environ.setdefault("MAX_MODEL_LEN", "2048")
    handler = handler_module.load(args.handler)
    print(f"Starting vLLM on {os.environ['MODEL']} (about a minute on a CPU)...", flush=True)
    handler.load_engine()
    print(f"\n>>> {args.prompt}\n")
    return asyncio.run(stream_answer(handler.handler, args.prompt, args.max_tokens))


if __name__ == "__main__":
    sys.exit(main())
