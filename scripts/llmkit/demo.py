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
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from llmkit import models
from llmkit.paths import REPO_ROOT, cache_dir

SAMPLE_PROMPT = "What is the capital of France? Answer in one sentence."
ENDPOINT_ID = "demo"
START_TIMEOUT_S = 900  # a first engine start on a busy 2-core CPU can take minutes


class DemoError(RuntimeError):
    pass


def _load_client():
    path = REPO_ROOT / "scripts" / "stream_client_side.py"
    spec = importlib.util.spec_from_file_location("stream_client_side", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_for_base_url(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = re.search(r"^base url: (\S+)$", log.read_text(errors="replace"), re.M)
        if match:
            return match.group(1)
        if proc.poll() is not None:
            raise DemoError(f"the endpoint exited with code {proc.returncode}")
        time.sleep(0.2)
    raise DemoError("the endpoint did not start listening within 120 s")


def _wait_for_worker(proc: subprocess.Popen, base: str, key: str) -> None:
    """Until the worker polls for jobs: vLLM loads the model first (about a minute)."""
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    next_note = started + 15
    while True:
        if proc.poll() is not None:
            raise DemoError(f"the endpoint exited with code {proc.returncode}")
        health = requests.get(f"{base}/{ENDPOINT_ID}/health", headers=headers, timeout=10).json()
        if health["workers"]["idle"] + health["workers"]["running"] >= 1:
            print(f"worker ready after {time.monotonic() - started:.0f} s", flush=True)
            return
        if health["workers"]["unhealthy"]:
            raise DemoError("the worker failed to start")
        if time.monotonic() - started > START_TIMEOUT_S:
            raise DemoError(f"the worker was not ready after {START_TIMEOUT_S} s")
        if time.monotonic() > next_note:
            print(f"  ... still loading ({time.monotonic() - started:.0f} s)", flush=True)
            next_note += 15
        time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM: the endpoint drains and stops its worker. SIGKILL only if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def run_demo(model: Path, handler: Path, prompt: str, max_tokens: int) -> int:
    log = cache_dir() / "demo-endpoint.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(12)
    env = {**os.environ}
    env.setdefault("MAX_MODEL_LEN", "2048")
    print(f"Starting the local endpoint and a worker on {model}\n"
          f"(vLLM takes about a minute on a CPU; its log: {log})", flush=True)
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmkit.endpoint", "--port", "0", "--workers", "1",
             "--restarts", "0", "--endpoint-id", ENDPOINT_ID, "--api-key", key,
             "--handler", str(handler), "--model", str(model)],
            cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        base = _wait_for_base_url(proc, log)
        print(f"endpoint: {base}/{ENDPOINT_ID}", flush=True)
        _wait_for_worker(proc, base, key)
        print(f"\n>>> {prompt}\n", flush=True)
        code = _load_client().main(["--base-url", base, "--endpoint-id", ENDPOINT_ID,
                                    "--api-key", key, "--mode", "stream", "--prompt", prompt,
                                    "--max-tokens", str(max_tokens)])
        if code:
            print(f"\nthe job did not complete; the endpoint's log ends:\n{_tail(log)}",
                  file=sys.stderr)
        return code
    except DemoError as err:
        print(f"error: {err}; the endpoint's log ends:\n{_tail(log)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        print("stopping the endpoint and its worker...", flush=True)
        _stop(proc)
        print(f"stopped (exit code {proc.returncode})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: $MODEL or the embedded model")
    parser.add_argument("--prompt", default=SAMPLE_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--handler", default=str(REPO_ROOT / "build" / "handler.py"))
    args = parser.parse_args(argv)
    handler = Path(args.handler)
    if not handler.is_file():
        print(f"error: {handler} does not exist: run `make export-handler` first",
              file=sys.stderr)
        return 1
    try:
        model = models.resolve(args.model)
    except models.ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return run_demo(model, handler.resolve(), args.prompt, args.max_tokens)


if __name__ == "__main__":
    sys.exit(main())
