"""What the benchmarks send and time: the prompts, the job inputs, one job's timings,
and clients in closed loops."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.stats import median, pct
from llmkit.job_inputs import exact_tokens

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


def job_input(i: int, tokens: int, stream: bool = True) -> dict:
    """Prompt ``i`` of the set as a chat message; greedy, exactly ``tokens`` tokens."""
    return exact_tokens(tokens, PROMPTS[i % len(PROMPTS)], stream=stream, chat=True,
                        temperature=0)


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
    job_id: str = ""                  # the endpoint's id for it, where there is one
    wall_start: float = field(default_factory=time.time)  # to line up with a worker's trace

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def wall_first(self) -> float | None:
        return None if self.first is None else self.wall_start + self.first - self.start

    @property
    def gaps(self) -> list[float]:
        """Seconds between successive chunks' arrivals."""
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start


def post_bytes(chunk: Any) -> int:
    """Bytes of the body the SDK posts for one streamed chunk."""
    return len(json.dumps({"output": chunk}, ensure_ascii=False).encode())


async def sse_reads(response):
    """(arrival time, the events it completed) for each network read of a server-sent-events
    body (an aiohttp response): an event split across reads counts when its end arrives."""
    pending = b""
    async for data in response.content.iter_any():
        t = now()
        pending += data
        events, pending = pending.rsplit(b"\n\n", 1) if b"\n\n" in pending else (b"", pending)
        yield t, [e for e in events.split(b"\n\n") if e]


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


def interleave(variants: list[str], reps: int) -> list[str]:
    """A,B,C, C,B,A, A,B,C ...: alternating order cancels drift and warm-up order."""
    order = []
    for r in range(reps):
        order.extend(variants if r % 2 == 0 else list(reversed(variants)))
    return order


async def rounds_by_clients(runner: Callable[[str], Callable[[int], Awaitable[JobStats]]],
                            variants: list[str], clients: list[int], reps: int
                            ) -> dict[tuple[int, str], list[Round]]:
    """At each client count, ``reps`` closed-loop rounds of each variant, interleaved so
    that drift hits them alike (3 jobs per client at 1 client, else 2); ``runner(variant)``
    gives the job function. Keyed (clients, variant)."""
    rounds = {(n, v): [] for n in clients for v in variants}
    for n in clients:
        per_client = 3 if n == 1 else 2
        for i, v in enumerate(interleave(variants, reps)):
            rep = i // len(variants)
            rounds[n, v].append(await closed_loop(
                lambda j, v=v, rep=rep: runner(v)(rep * 7 + j), n, per_client))
    return rounds


def round_rows(rounds: dict[tuple[int, str], list[Round]]) -> dict[str, dict]:
    """One row per (clients, variant) of rounds_by_clients: medians over its rounds and jobs."""
    rows = {}
    for (n, v), rs in rounds.items():
        jobs = [j for r in rs for j in r.jobs]
        rows[f"{n} client(s): {v}"] = {
            "clients": n, "variant": v, "tok_s": median([r.tok_s for r in rs]),
            "job_s": median([j.latency for j in jobs]),
            "ttft_ms": median([j.ttft * 1e3 for j in jobs]),
            "chunks": median([j.chunks for j in jobs]), "rounds": len(rs), "jobs": len(jobs)}
    return rows
