"""9. Load-balancing against the queue: the same worker code, two ways to reach it.

The same handler.py, model and CONCURRENCY_MODIFIER, side by side in one run:
- queue: the local endpoint and a queue worker, as a queue-based endpoint serves it (native
  API: /run, then /stream polled; OpenAI route: /openai/v1/chat/completions, SSE);
- load-balancing: the worker as its own HTTP server (MODE_TO_RUN=lb), as a load-balancing
  endpoint reaches it (native API: POST /runsync with Accept: text/event-stream; OpenAI:
  /v1/chat/completions, SSE).
Greedy, exactly N tokens per request, streamed; closed-loop clients (1 and 16 at once);
variants alternate. Also the load-balancing worker's /ping over its start, timed.

    .venv/bin/python -m bench.load_balancing [--quick] [--model SPEC] [--json OUT]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import aiohttp

from bench import openai_route, runner, stats, workload
from llmkit.endpoint.harness import EndpointError
from llmkit.paths import REPO_ROOT

VARIANTS = ["queue: native API", "load-balancing: native API",
            "queue: OpenAI route", "load-balancing: OpenAI route"]


class LBWorker:
    """handler.py with MODE_TO_RUN=lb in its own process; /ping polled from its start."""

    def __init__(self, handler, modifier: int, log_dir):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"lb-worker-c{modifier}.log"
        env = {**os.environ, "MODE_TO_RUN": "lb", "PORT": str(self.port),
               "CONCURRENCY_MODIFIER": str(modifier),
               "PYTHONPATH": str(REPO_ROOT / "scripts")}
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-u", str(handler)], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        self.session = None
        self.pings: list = []  # (seconds since start, /ping status) at each change
        self.watch = threading.Thread(target=self._watch_ping, daemon=True)
        self.watch.start()

    def _watch_ping(self, timeout: float = 900):
        while time.monotonic() - self.started < timeout and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=5) as r:
                    status = r.status
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                status = None  # not listening yet
            if not self.pings or self.pings[-1][1] != status:
                self.pings.append((round(time.monotonic() - self.started, 2), status))
            if status == 200:
                return
            time.sleep(0.05)

    async def start(self) -> list:
        """Wait until /ping answers 200; return its statuses over the start, timed."""
        self.watch.join()
        if not self.pings or self.pings[-1][1] != 200:
            raise EndpointError(f"/ping never answered 200: {self.pings}; {self.log_path}")
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(None))
        return self.pings

    async def native_job(self, inp: dict) -> workload.JobStats:
        st = workload.JobStats(start=workload.now())
        async with self.session.post(f"{self.url}/runsync", json={"input": inp},
                                     headers={"Accept": "text/event-stream"}) as r:
            if r.status != 200:
                raise EndpointError(f"/runsync answered {r.status}: {await r.text()}")
            async for t, events in workload.sse_reads(r):
                for event in events:
                    if event.startswith(b"event: error"):
                        raise EndpointError(f"error event: {event!r}")
                    text = json.loads(event.removeprefix(b"data: ")).get("text", "")
                    if st.first is None:
                        st.first = t
                    st.chunks += 1
                    st.chunk_times.append(t)
                    st.texts.append(text)
        st.end = workload.now()
        st.tokens = inp["sampling_params"]["max_tokens"]
        return st

    async def stop(self):
        if self.session is not None:
            await self.session.close()
        self.process.terminate()
        self.process.wait(60)


def add_args(p) -> None:
    p.add_argument("--tokens", type=int, default=None, help="tokens per request (64; quick 16)")
    p.add_argument("--reps", type=int, default=3, help="rounds per variant (3)")
    p.add_argument("--clients", default=None, help="clients at once, comma list (1,16; quick 1,2)")


def measure(ctx: runner.Context, args) -> dict:
    tokens = args.tokens or (16 if args.quick else 64)
    clients = [int(x) for x in (args.clients or ("1,2" if args.quick else "1,16")).split(",")]
    modifier = max(clients)
    lb = LBWorker(args.handler, modifier, ctx.log_dir)  # starts beside the queue worker
    try:
        ep = ctx.endpoint(modifier)
        pings = ctx.run(lb.start())
        model = ctx.run(openai_route.served_model(ep))

        def job(variant):
            if variant == VARIANTS[0]:
                return lambda i: ep.stream_job(workload.job_input(i, tokens))
            if variant == VARIANTS[1]:
                return lambda i: lb.native_job(workload.job_input(i, tokens))
            base = None if variant == VARIANTS[2] else f"{lb.url}/v1"
            return lambda i: openai_route.openai_job(lb if base else ep, model, i, tokens, base)

        async def go():
            texts = {v: (await job(v)(0)).text for v in VARIANTS}  # warm-up
            return texts, await workload.rounds_by_clients(job, VARIANTS, clients, args.reps)

        texts, rounds = ctx.run(go())
    finally:
        ctx.run(lb.stop())
    rows, ratios = workload.round_rows(rounds), []
    for n in clients:
        for api in ("native API", "OpenAI route"):
            q = rows[f"{n} client(s): queue: {api}"]
            b = rows[f"{n} client(s): load-balancing: {api}"]
            ratios.append(stats.ratio(f"load-balancing / queue tok/s, {api}, {n} client(s)",
                                      b["tok_s"] / q["tok_s"], None))
            ratios.append(stats.ratio(f"queue / load-balancing first-text ms, {api}, "
                                      f"{n} client(s)", q["ttft_ms"] / b["ttft_ms"], None))
    return {"tokens_per_job": tokens, "reps": args.reps, "modifier": modifier, "rows": rows,
            "ratios": ratios, "pings": pings,
            "same_text": texts[VARIANTS[0]] == texts[VARIANTS[1]]}


def report(r: dict) -> str:
    rows = [[x["clients"], x["variant"], x["tok_s"], x["ttft_ms"], x["job_s"] * 1e3]
            for x in r["rows"].values()]
    pings = ", ".join(f"{s} s: {'not listening' if c is None else c}" for s, c in r["pings"])
    return "\n".join([
        f"## 9. Load-balancing against the queue ({r['model']}, {r['tokens_per_job']} tokens "
        f"per request, streaming, {r['reps']} rounds per variant, "
        f"CONCURRENCY_MODIFIER={r['modifier']})",
        stats.table(["clients", "path", "tok/s", "first text ms", "request ms"], rows),
        "tok/s: all clients' tokens over the round's wall time; first text: request sent -> "
        "first text at the client",
        f"the load-balancing worker's /ping from its start: {pings}",
        "greedy answer to the first prompt, queue and load-balancing native API: "
        + ("the same text" if r["same_text"] else "different texts"),
        stats.ratio_lines(r["ratios"]),
    ])


if __name__ == "__main__":
    runner.script_main("load_balancing", __doc__, add_args, measure, report)
