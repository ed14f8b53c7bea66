"""`make demo`: the whole way, on this machine: a local Runpod endpoint, one worker
running the exported handler.py on the default model, and an answer streamed
through the kit's client (scripts/stream_client_side.py).

    python -m llmkit.demo [--model SPEC] [--prompt TEXT] [--max-tokens N] [--handler PATH]

The endpoint's own log, vLLM's included, goes to a file; its last lines are shown
if anything fails. Everything started here is stopped before it exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from llmkit import handler_module, models
from llmkit.endpoint.harness import EndpointError, EndpointProcess
from llmkit.paths import REPO_ROOT, cache_dir

SAMPLE_PROMPT = "What is the capital of France? Answer in one sentence."
ENDPOINT_ID = "demo"


def _load_client():
    path = REPO_ROOT / "scripts" / "stream_client_side.py"
    spec = importlib.util.spec_from_file_location("stream_client_side", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_demo(model: Path, handler: Path, prompt: str, max_tokens: int) -> int:
    log = cache_dir() / "demo-endpoint.log"
    print(f"Starting the local endpoint and a worker on {model}\n"
          f"(vLLM takes about a minute on a CPU; its log: {log})", flush=True)
    endpoint = EndpointProcess(workers=1, model=model, handler=handler, endpoint_id=ENDPOINT_ID,
                               args=["--restarts", "0"], log_path=log,
                               env={"MAX_MODEL_LEN": os.environ.get("MAX_MODEL_LEN", "2048")})
    try:
        endpoint.start()
        print(f"endpoint: {endpoint.url}", flush=True)
        waited = endpoint.wait_workers(1, progress=lambda s: print(
            f"  ... still loading ({s:.0f} s)", flush=True))
        print(f"worker ready after {waited:.0f} s", flush=True)
        print(f"\n>>> {prompt}\n", flush=True)
        code = _load_client().main(["--base-url", endpoint.base, "--endpoint-id", ENDPOINT_ID,
                                    "--api-key", endpoint.api_key, "--mode", "stream",
                                    "--prompt", prompt, "--max-tokens", str(max_tokens)])
        if code:
            print(f"\nthe job did not complete; the endpoint's log ends:\n"
                  f"{endpoint.log_tail(30)}", file=sys.stderr)
        return code
    except EndpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        print("stopping the endpoint and its worker...", flush=True)
        code = endpoint.stop()
        print(f"stopped (exit code {code})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: $MODEL or the embedded model")
    parser.add_argument("--prompt", default=SAMPLE_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--handler", default=str(REPO_ROOT / "build" / "handler.py"))
    args = parser.parse_args(argv)
    handler = Path(args.handler)
    problem = handler_module.missing(handler)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return handler_module.MISSING_EXIT
    try:
        model = models.resolve(args.model)
    except models.ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_demo(model, handler.resolve(), args.prompt, args.max_tokens)


if __name__ == "__main__":
    sys.exit(main())
