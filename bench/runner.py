"""How a benchmark runs: its command line, the model and environment it sets up, the
engines it shares (Context), and the script wrapper that prints and writes figures.

Standard library only at import: cold_start times its own imports from here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from bench.machine import machine, on_gpu
from llmkit.paths import HANDLER_PATH

REPO = Path(__file__).resolve().parents[1]
HANDLER = HANDLER_PATH
DEFAULT_MODEL = "SmolLM2-135M-Instruct"

if TYPE_CHECKING:
    from bench.endpoint import BenchEndpoint
    from bench.engine import InProcess


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None,
                   help=f"MODEL spec (default {DEFAULT_MODEL}; with --quick the tiny model)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny configuration: tiny random model, few jobs (smoke test)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--handler", type=Path, default=HANDLER)
    p.add_argument("--verbose", action="store_true", help="keep vLLM's INFO logs")
    return p


def model_label(args) -> str:
    if args.model:
        return str(args.model)
    return "tiny-llama (random)" if args.quick else DEFAULT_MODEL


def setup_env(args) -> Path:
    """Resolve the model and set the environment the handler (and workers) read."""
    from llmkit import models, tiny_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not args.verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("RUNPOD_DEBUG_LEVEL", "WARN")
    if args.model:
        folder = models.resolve(args.model)
    elif args.quick:
        folder = tiny_model.build()
    else:
        folder = models.resolve(DEFAULT_MODEL)
    os.environ["MODEL"] = str(folder)
    # Every job pays its own prefill: with vLLM's prefix cache on (its default), a
    # prompt repeated across variants would run faster for whichever came second.
    os.environ.setdefault("ENABLE_PREFIX_CACHING", "false")
    if on_gpu() and not os.environ.get("GPU_MEMORY_UTILIZATION"):
        # Benchmarks hold up to three engines at once (in-process + two endpoint
        # workers); each gets a share of the GPU.
        os.environ["GPU_MEMORY_UTILIZATION"] = "0.28"
    return folder


def write_json(path: Path | None, data: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


class Context:
    """One event loop, one in-process engine, endpoints by CONCURRENCY_MODIFIER.

    Each is started on first use and kept for the whole run, so run_all starts each
    engine once. Idle engines cost almost no CPU (measured: ~2% of a core).
    """

    def __init__(self, args) -> None:
        self.args = args
        self.runner = asyncio.Runner()
        setup_env(args)
        self._inproc: InProcess | None = None
        self._endpoints: dict = {}  # by _key(): the modifier, plus env when it has one
        self.log_dir = Path(tempfile.mkdtemp(prefix="llmkit-bench-"))
        self.starts: dict[str, float] = {}
        # SIGTERM (a timeout, `kill`) unwinds like Ctrl-C, so close() stops the workers.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def run(self, coro):
        return self.runner.run(coro)

    def inproc(self) -> InProcess:
        if self._inproc is None:
            from bench.engine import InProcess

            async def load():
                return InProcess(self.args.handler)

            self._inproc = self.run(load())
            self.starts["in-process engine"] = self._inproc.start_s
            say(f"in-process engine ready in {self._inproc.start_s:.0f} s")
        return self._inproc

    def prestart(self, modifiers: list[int]) -> None:
        """Spawn endpoints now, to start beside the in-process engine (saves minutes)."""
        for m in modifiers:
            if m not in self._endpoints:
                say(f"launching the local endpoint, CONCURRENCY_MODIFIER={m} ...")
                self._endpoints[m] = self._new_endpoint(m)
                self._endpoints[m].launch()

    def _new_endpoint(self, concurrency: int,
                      env: dict[str, str] | None = None) -> BenchEndpoint:
        from bench.endpoint import BenchEndpoint  # the harness: not at import

        return BenchEndpoint(concurrency, self.log_dir, self.args.handler, env=env)

    def endpoint(self, concurrency: int, env: dict[str, str] | None = None) -> BenchEndpoint:
        """The endpoint whose worker runs with CONCURRENCY_MODIFIER=concurrency (and env)."""
        key = _key(concurrency, env)
        ep = self._endpoints.get(key)
        if ep is None or ep.session is None:
            self.run(self._start_endpoint(concurrency, env))
        return self._endpoints[key]

    def launch_endpoint(self, concurrency: int, env: dict[str, str] | None = None) -> None:
        """Spawn an endpoint now, to start beside others; endpoint() then waits for it."""
        key = _key(concurrency, env)
        if key not in self._endpoints:
            say(f"launching the local endpoint {key} ...")
            self._endpoints[key] = self._new_endpoint(concurrency, env)
            self._endpoints[key].launch()

    def stop_endpoint(self, concurrency: int, env: dict[str, str] | None = None) -> None:
        """Stop one endpoint (and free its engine); endpoint() would start it again."""
        ep = self._endpoints.pop(_key(concurrency, env), None)
        if ep is not None:
            self.run(ep.stop())

    async def _start_endpoint(self, concurrency: int, env: dict[str, str] | None) -> None:
        key = _key(concurrency, env)
        ep = self._endpoints.get(key)
        if ep is None:
            say(f"starting the local endpoint {key} ...")
            ep = self._new_endpoint(concurrency, env)
            self._endpoints[key] = ep
        await ep.start()
        label = f"modifier {concurrency}" + "".join(f", {k}={v}" for k, v in
                                                     sorted((env or {}).items()))
        self.starts[f"endpoint ({label})"] = ep.start_s
        say(f"endpoint ready {ep.start_s:.0f} s after launch (log {ep.log_path})")

    def close(self) -> None:
        async def stop_all():
            for ep in list(self._endpoints.values()):
                try:
                    await ep.stop()
                except Exception as err:
                    say(f"stopping {ep.log_path.name}: {err}")

        with contextlib.suppress(Exception):
            self.run(stop_all())
        self._endpoints.clear()
        if self._inproc:
            self._inproc.close()
            self._inproc = None
        self.runner.close()


def _key(concurrency: int, env: dict[str, str] | None):
    """An endpoint's key: its modifier alone when it runs with the defaults."""
    return (concurrency, *sorted(env.items())) if env else concurrency


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def script_main(name: str, description: str, add_args, measure, report) -> None:
    """Run one benchmark on its own: parse, measure, print, write JSON."""
    p = parser(description)
    if add_args:
        add_args(p)
    args = p.parse_args()
    ctx = Context(args)
    try:
        result = measure(ctx, args)
    finally:
        ctx.close()
    result["machine"] = machine()
    result["model"] = model_label(args)
    print(report(result))
    write_json(args.json, {name: result})

