"""Runs the exported handler.py as worker processes, the way the platform would.

Each worker is ``python handler.py`` with no flags, in production mode (the
RUNPOD_WEBHOOK_* variables from ``worker_env``). What this module adds is what the
platform does around a worker, and what the SDK's gotchas need:

* a fresh, empty working directory per start, so no stale ``.runpod_jobs.pkl``
  (the SDK's in-flight list) is inherited; with one the SDK waits forever;
* its own process group, killed whole after the worker exits, so the SDK's
  heartbeat child and vLLM's engine process never outlive it;
* a death signal tied to this process, so a worker never outlives the server
  (the SDK would poll a dead server in a tight loop);
* drain before SIGTERM, so no job is handed out while the worker shuts down;
* on a crash: its jobs FAILED with the reason, then a restart.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import psutil

from llmkit.endpoint.config import EndpointState
from llmkit.endpoint.worker_api import worker_env
from llmkit.processes import die_with_parent, signal_process

log = logging.getLogger("llmkit.endpoint")
TAIL_LINES = 40
TRACK_CHILDREN_S = 2.0
EXIT_POLL_S = 0.2

def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Keeps ``count`` workers running against an endpoint's state."""

    def __init__(self, state: EndpointState, root_url: str, handler: Path, count: int,
                 env: dict[str, str] | None = None, restarts: int = 3,
                 grace_s: float = 20.0) -> None:
        self.state, self.root_url, self.handler = state, root_url, Path(handler).resolve()
        self.count, self.env, self.restarts, self.grace_s = count, env or {}, restarts, grace_s
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._slots: list[asyncio.Task] = []
        self._stopping = False

    async def start(self) -> None:
        """Call after the server listens: a worker facing a dead server spins."""
        _remove_orphaned_workdirs()
        for slot in range(1, self.count + 1):
            self._slots.append(asyncio.create_task(self._run_slot(slot)))

    async def stop(self) -> None:
        """Drain every worker, SIGTERM it, wait for running jobs, then SIGKILL."""
        self._stopping = True
        # Running jobs are failed and their workers told to stop them (the results
        # would die with this server anyway), so a worker exits in seconds.
        self.state.store.shutdown("the local endpoint shut down while this job ran")
        self.state.registry.drain()
        self.state.store.signal.notify()  # end their open take and stop polls now
        for _ in range(15):  # the SDK reads stops only until its SIGTERM
            if not any(self.state.store.has_stops(w) for w in self._procs):
                break
            await asyncio.sleep(0.1)
        for proc in list(self._procs.values()):
            signal_process(proc.pid, signal.SIGTERM, group=False)
        if not self._slots:
            return
        _, pending = await asyncio.wait(self._slots, timeout=self.grace_s)
        if pending:
            log.warning("workers still running after %.0f s; killing them", self.grace_s)
            for proc in list(self._procs.values()):
                signal_process(proc.pid, signal.SIGKILL, group=True)
            await asyncio.wait(pending, timeout=10)

    def kill(self) -> None:
        """SIGKILL every worker's process group now (a second Ctrl-C)."""
        self._stopping = True
        for proc in list(self._procs.values()):
            signal_process(proc.pid, signal.SIGKILL, group=True)

    async def _run_slot(self, slot: int) -> None:
        restarts = 0
        while not self._stopping:
            worker_id = f"worker-{slot}" if restarts == 0 else f"worker-{slot}.{restarts}"
            was_ready, reason, tail = await self._run_once(slot, worker_id)
            if self._stopping:
                return
            if not was_ready:
                log.error("%s %s before it took any job; not restarting it. Its last "
                          "output:\n%s", worker_id, reason, "".join(tail).rstrip())
                return
            if restarts >= self.restarts:
                log.error("%s %s; it was restarted %d times already, giving up", worker_id,
                          reason, restarts)
                return
            restarts += 1
            log.warning("%s %s; starting a replacement", worker_id, reason)
            await asyncio.sleep(1)

    async def _run_once(self, slot: int, worker_id: str):
        workdir = tempfile.mkdtemp(prefix=f"llmkit-{worker_id}-p{os.getpid()}-")
        env = {**os.environ, **self.env,
               **worker_env(self.root_url, self.state.config.endpoint_id, worker_id,
                            self.state.config.api_key),
               "PYTHONUNBUFFERED": "1"}
        env.setdefault("RUNPOD_DEBUG_LEVEL", "INFO")  # the SDK logs every poll at DEBUG
        parent = os.getpid()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(self.handler), cwd=workdir, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=lambda: die_with_parent(parent),
            limit=1 << 20)
        info = self.state.registry.spawned(worker_id, slot, proc.pid)
        self._procs[worker_id] = proc
        if self._stopping:  # stop() came while this one was being spawned
            signal_process(proc.pid, signal.SIGTERM, group=False)
        log.info("%s started (pid %d, working directory %s)", worker_id, proc.pid, workdir)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        family: dict[int, float] = {}
        pump = asyncio.create_task(_pump(worker_id, proc.stdout, tail))
        tracker = asyncio.create_task(_track_family(proc.pid, family))
        try:
            # Not proc.wait(): that also waits for the stdout pipe to close, which a
            # surviving child (the heartbeat) keeps open after a SIGKILL.
            while proc.returncode is None:
                await asyncio.sleep(EXIT_POLL_S)
            code = proc.returncode
        finally:
            tracker.cancel()
            _kill_family(proc.pid, family)
            self._procs.pop(worker_id, None)
        try:
            await asyncio.wait_for(pump, timeout=5)
        except asyncio.TimeoutError:
            pump.cancel()
        reason = describe_exit(code)
        crashed = not self._stopping
        self.state.registry.exited(worker_id, reason, crashed=crashed)
        lost = self.state.store.worker_lost(
            worker_id, reason if crashed else f"{reason} (endpoint shutting down)")
        if lost:
            log.warning("%s %s; failed its job(s): %s", worker_id, reason,
                        ", ".join(job.id for job in lost))
        elif not crashed:
            log.info("%s %s", worker_id, reason)
        shutil.rmtree(workdir, ignore_errors=True)
        return info.last_seen is not None, reason, list(tail)


def _remove_orphaned_workdirs() -> None:
    """Working directories left by a server that was killed (its pid is in the name)."""
    for path in Path(tempfile.gettempdir()).glob("llmkit-worker-*-p*-*"):
        match = re.search(r"-p(\d+)-[^-]*$", path.name)
        if match and not psutil.pid_exists(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


async def _pump(worker_id: str, stream: asyncio.StreamReader, tail) -> None:
    """Worker output to ours, one prefixed line at a time; keeps the last lines."""
    prefix = f"[{worker_id}] "
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line over the limit: take it in pieces
            raw = await stream.read(1 << 16)
        if not raw:
            return
        line = raw.decode(errors="replace")
        tail.append(line)
        sys.stdout.write(prefix + line.rstrip("\r\n") + "\n")
        sys.stdout.flush()


async def _track_family(pid: int, family: dict[int, float]) -> None:
    """Remember the worker's descendants (heartbeat, vLLM engine core) while it lives:
    once it is dead they are orphans that no longer show up as its children."""
    while True:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                family.setdefault(child.pid, child.create_time())
        except psutil.Error:
            return
        await asyncio.sleep(TRACK_CHILDREN_S)


def _kill_family(pid: int, family: dict[int, float]) -> None:
    signal_process(pid, signal.SIGKILL, group=True)
    for child_pid, created in family.items():
        try:
            child = psutil.Process(child_pid)
            if child.create_time() == created:  # not a recycled pid
                child.kill()
        except psutil.Error:
            pass
