"""Which workers exist and what state they are in, as the server sees them.

A worker is known from its first contact (external workers) or from its spawn
(workers the supervisor started). Liveness comes from the worker's own process:
its take and stop polls and its posts. Pings do not count, because the heartbeat
is a separate child process that can outlive a killed worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STARTING = "starting"   # spawned, engine still loading, no contact yet
READY = "ready"         # polling for jobs
DRAINING = "draining"   # being shut down: gets no new jobs
EXITED = "exited"       # process gone, or an external worker lost contact

# An external worker that has not been heard from for this long is declared lost.
LOST_AFTER_S = 30.0


@dataclass
class WorkerInfo:
    id: str
    supervised: bool
    slot: int | None = None
    pid: int | None = None
    state: str = STARTING
    crashed: bool = False          # exited without being asked to
    exit_reason: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    last_seen: float | None = None
    open_polls: int = 0
    warned_stale: bool = False
    unhealthy_reason: str | None = None  # what the worker reported before exiting
    handler: dict | None = None  # the handler it serves: sha256, reloads, the last failure

    def heard_handler(self, query) -> None:
        """A worker's report of its handler (llmkit/runtime/reload.py: at start and at
        each reload)."""
        self.handler = {
            "sha256": query.get("handler"), "file": query.get("handler_file"),
            "reloads": int(query.get("reloads", "0") or 0),
            "lastReloadFailed": query.get("reload") == "failed",
            "reloadError": query.get("reload_error") or None,
            "restartNeeded": [n for n in query.get("restart_needed", "").split(",") if n]}

    def describe(self, jobs: list[str]) -> dict:
        return {"id": self.id, "state": self.state, "pid": self.pid, "slot": self.slot,
                "supervised": self.supervised, "jobs": jobs, "crashed": self.crashed,
                "exitReason": self.exit_reason, "unhealthyReason": self.unhealthy_reason,
                "handler": self.handler}


class Registry:
    def __init__(self) -> None:
        self.workers: dict[str, WorkerInfo] = {}

    def spawned(self, worker_id: str, slot: int, pid: int) -> WorkerInfo:
        info = WorkerInfo(worker_id, supervised=True, slot=slot, pid=pid)
        self.workers[worker_id] = info
        return info

    def contact(self, worker_id: str) -> WorkerInfo:
        """Any request from the worker's main process: it is alive and ready."""
        info = self.workers.get(worker_id)
        if info is None:
            info = self.workers[worker_id] = WorkerInfo(worker_id, supervised=False)
        if info.state == STARTING:
            info.state = READY
        elif info.state == EXITED and not info.supervised:
            # An external worker we had written off came back.
            info.state, info.crashed, info.exit_reason = READY, False, None
        info.last_seen = time.monotonic()
        return info

    def accepts_jobs(self, worker_id: str) -> bool:
        info = self.workers.get(worker_id)
        return info is not None and info.state == READY

    def drain(self, worker_id: str | None = None) -> None:
        """Stop handing jobs to one worker (or all) before it is told to stop."""
        for info in self.workers.values():
            if worker_id in (None, info.id) and info.state in (STARTING, READY):
                info.state = DRAINING

    def exited(self, worker_id: str, reason: str, crashed: bool) -> None:
        info = self.workers[worker_id]
        info.state, info.exit_reason, info.crashed = EXITED, reason, crashed

    def lost_external(self, now: float | None = None) -> list[WorkerInfo]:
        """External workers silent for too long (no open poll, no request)."""
        now = time.monotonic() if now is None else now
        return [w for w in self.workers.values()
                if not w.supervised and w.state in (READY, DRAINING) and w.open_polls == 0
                and w.last_seen is not None and now - w.last_seen > LOST_AFTER_S]

    def health(self, busy: set[str]) -> dict:
        """The platform's worker counts, from the newest worker of each slot.

        A crashed worker stays 'unhealthy' until its replacement is ready; the
        replacement meanwhile also counts as 'initializing'.
        """
        counts = {"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0,
                  "unhealthy": 0}
        newest: dict = {}
        crashed_slots = set()
        for w in self.workers.values():
            key = ("slot", w.slot) if w.supervised else ("ext", w.id)
            if w.crashed:
                crashed_slots.add(key)
            if key not in newest or w.started_at >= newest[key].started_at:
                newest[key] = w
        for key, w in newest.items():
            if w.state == STARTING:
                counts["initializing"] += 1
                counts["unhealthy"] += key in crashed_slots
            elif w.state in (READY, DRAINING):
                counts["running" if w.id in busy else "idle"] += 1
            elif w.crashed:
                counts["unhealthy"] += 1
        counts["ready"] = counts["idle"]
        return counts

    def handlers(self) -> list[dict]:
        """Which handler each live worker serves (workers that report it: HANDLER_RELOAD)."""
        return [{"worker": w.id, "sha256": w.handler["sha256"],
                 "lastReloadFailed": w.handler["lastReloadFailed"]}
                for w in self.workers.values()
                if w.handler and w.state in (STARTING, READY, DRAINING)]
