"""The job store: the queue, each job's state, its stream, and who holds it.

Everything here is plain synchronous code on the server's event loop, so no locks
are needed; every change calls ``signal.notify()`` so long-polls wake up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
FINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
STOPPED = frozenset({CANCELLED, TIMED_OUT})  # final states a worker must be told about

# How long results stay readable after the job ends, as on the platform.
RETAIN_RUN_S = 30 * 60
RETAIN_RUNSYNC_S = 60
DEFAULT_TTL_S = 24 * 3600

_NO_OUTPUT = object()


class Signal:
    """A broadcast that sync code can fire: every waiter wakes on the next change."""

    def __init__(self) -> None:
        self._future: asyncio.Future | None = None

    def notify(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None

    async def wait(self, timeout: float) -> None:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._future), max(timeout, 0))
        except asyncio.TimeoutError:
            pass


@dataclass
class Job:
    id: str
    input: Any
    sync: bool
    execution_timeout_s: float
    ttl_s: float
    webhook: str | None = None
    status: str = IN_QUEUE
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    output: Any = _NO_OUTPUT
    error: str | None = None
    stream: list = field(default_factory=list)
    stream_read: int = 0  # chunks already handed to /stream pollers
    timer: asyncio.TimerHandle | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def payload(self) -> dict:
        """The platform's /status reply for this job."""
        reply: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started_at is not None:
            reply["delayTime"] = _ms(self.started_at - self.submitted_at)
            reply["workerId"] = self.worker_id
        if self.final:
            start = self.started_at if self.started_at is not None else self.finished_at
            reply["executionTime"] = _ms(self.finished_at - start)
        if self.output is not _NO_OUTPUT:
            reply["output"] = self.output
        if self.error is not None:
            reply["error"] = self.error
        return reply


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class JobStore:
    """All jobs of one endpoint. The server keeps it; workers only borrow jobs."""

    def __init__(self, execution_timeout_s: float) -> None:
        self.execution_timeout_s = execution_timeout_s
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.signal = Signal()
        self.counters = {"completed": 0, "failed": 0, "cancelled": 0, "timedOut": 0,
                         "retried": 0}
        # worker id -> job ids that worker must stop (cancelled or timed out)
        self._stops: dict[str, set[str]] = {}
        self._on_final = []  # callbacks(job) run when a job reaches a final state

    # ---- client side -------------------------------------------------------------
    def submit(self, job_input: Any, *, sync: bool, execution_timeout_s: float | None = None,
               ttl_s: float | None = None, webhook: str | None = None) -> Job:
        job_id = ("sync-" if sync else "") + str(uuid.uuid4())
        job = Job(job_id, job_input, sync,
                  execution_timeout_s or self.execution_timeout_s, ttl_s or DEFAULT_TTL_S,
                  webhook)
        self.jobs[job_id] = job
        self.queue.append(job_id)
        self.signal.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        if job.status == IN_QUEUE:
            self.queue.remove(job.id)
            self._finish(job, CANCELLED)
        elif job.status == IN_PROGRESS:
            self._finish(job, CANCELLED)
            self._ask_stop(job)

    def purge_queue(self) -> int:
        """Cancel every job still waiting; running jobs go on."""
        removed = 0
        while self.queue:
            job = self.jobs[self.queue.popleft()]
            self._finish(job, CANCELLED, error="removed from the queue by /purge-queue")
            removed += 1
        return removed

    def retry(self, job: Job) -> None:
        """Put a FAILED or TIMED_OUT job back in the queue under the same id."""
        self._cancel_timer(job)
        # A stop its old worker has not read yet belongs to the old run: delivered now,
        # it would stop the new one (same id) on whichever worker takes it.
        for pending in self._stops.values():
            pending.discard(job.id)
        job.status, job.error, job.output = IN_QUEUE, None, _NO_OUTPUT
        job.submitted_at, job.started_at, job.finished_at = time.monotonic(), None, None
        job.worker_id, job.stream, job.stream_read = None, [], 0
        self.queue.append(job.id)
        self.counters["retried"] += 1
        self.signal.notify()

    def read_stream(self, job: Job) -> list:
        """Chunks that arrived since the last /stream poll."""
        new = job.stream[job.stream_read:]
        job.stream_read = len(job.stream)
        return new

    # ---- worker side -------------------------------------------------------------
    def take(self, worker_id: str, count: int) -> list[Job]:
        taken = []
        loop = asyncio.get_running_loop()
        while self.queue and len(taken) < count:
            job = self.jobs[self.queue.popleft()]
            job.status, job.worker_id, job.started_at = IN_PROGRESS, worker_id, time.monotonic()
            # policy.executionTimeout runs from the moment a worker has the job.
            job.timer = loop.call_later(job.execution_timeout_s, self._time_out, job.id)
            taken.append(job)
        if taken:
            self.signal.notify()
        return taken

    def give_back(self, jobs: list[Job]) -> None:
        """Undo a take whose reply could not reach the worker (it hung up)."""
        for job in reversed(jobs):
            if job.status != IN_PROGRESS:
                continue
            self._cancel_timer(job)
            job.status, job.worker_id, job.started_at = IN_QUEUE, None, None
            self.queue.appendleft(job.id)
        self.signal.notify()

    def held_by(self, worker_id: str) -> list[Job]:
        return [j for j in self.jobs.values()
                if j.worker_id == worker_id and j.status == IN_PROGRESS]

    def add_chunk(self, worker_id: str, job: Job, chunk: Any) -> bool:
        """Store one streamed chunk; False if the job is no longer running there."""
        if job.status != IN_PROGRESS:
            self._remind_stop(worker_id, job)
            return False
        job.stream.append(chunk)
        self.signal.notify()
        return True

    def complete(self, worker_id: str, job: Job, result: dict) -> bool:
        """The worker's final post: {"output": ...} or {"error": ...}."""
        if job.status != IN_PROGRESS:
            self._remind_stop(worker_id, job)
            return False
        if "output" in result:
            job.output = result["output"]
        if result.get("error"):
            self._finish(job, FAILED, error=_text(result["error"]))
        else:
            self._finish(job, COMPLETED)
        return True

    def worker_lost(self, worker_id: str, reason: str) -> list[Job]:
        """Fail every job a dead worker held, so no client waits forever."""
        lost = self.held_by(worker_id)
        for job in lost:
            self._finish(job, FAILED, error=f"worker {worker_id} {reason} while running this job")
        self._stops.pop(worker_id, None)
        return lost

    def pop_stops(self, worker_id: str) -> list[str]:
        return sorted(self._stops.pop(worker_id, ()))

    def has_stops(self, worker_id: str) -> bool:
        return bool(self._stops.get(worker_id))

    def remind_stops(self, worker_id: str, job_ids: list[str]) -> None:
        """A worker still reports these jobs (ping): repeat the stop for stopped ones."""
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None:
                self._remind_stop(worker_id, job)

    # ---- housekeeping ------------------------------------------------------------
    def on_final(self, callback) -> None:
        self._on_final.append(callback)

    def expire(self, now: float | None = None) -> None:
        """Forget results past their retention and queued jobs past their ttl."""
        now = time.monotonic() if now is None else now
        for job in list(self.jobs.values()):
            if job.final:
                keep = RETAIN_RUNSYNC_S if job.sync else RETAIN_RUN_S
                if now - job.finished_at > keep:
                    del self.jobs[job.id]
            elif job.status == IN_QUEUE and now - job.submitted_at > job.ttl_s:
                self.queue.remove(job.id)
                del self.jobs[job.id]

    def counts(self) -> dict:
        in_progress = sum(1 for j in self.jobs.values() if j.status == IN_PROGRESS)
        c = self.counters
        return {"completed": c["completed"], "failed": c["failed"] + c["timedOut"],
                "inProgress": in_progress, "inQueue": len(self.queue), "retried": c["retried"]}

    def shutdown(self, reason: str) -> None:
        """The endpoint is going away: end what is still open, clearly."""
        for job in list(self.jobs.values()):
            if job.status == IN_QUEUE:
                self.queue.remove(job.id)
                self._finish(job, FAILED, error=reason)
            elif job.status == IN_PROGRESS:
                self._finish(job, FAILED, error=reason)
                self._ask_stop(job)  # so its worker stops now instead of finishing it

    # ---- internals ---------------------------------------------------------------
    def _time_out(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.status != IN_PROGRESS:
            return
        self._finish(job, TIMED_OUT, error=f"job ran past its execution timeout of "
                                          f"{job.execution_timeout_s:g} s")
        self._ask_stop(job)

    def _ask_stop(self, job: Job) -> None:
        if job.worker_id:
            self._stops.setdefault(job.worker_id, set()).add(job.id)
            self.signal.notify()

    def _remind_stop(self, worker_id: str, job: Job) -> None:
        # A worker that still works on a stopped job missed (or raced) the stop.
        if job.status in STOPPED and job.worker_id == worker_id:
            self._ask_stop(job)

    def _cancel_timer(self, job: Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        self._cancel_timer(job)
        job.status, job.finished_at = status, time.monotonic()
        if error is not None:
            job.error = error
        key = {COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled",
               TIMED_OUT: "timedOut"}[status]
        self.counters[key] += 1
        self.signal.notify()
        for callback in self._on_final:
            callback(job)


def _text(error: Any) -> str:
    return error if isinstance(error, str) else str(error)
