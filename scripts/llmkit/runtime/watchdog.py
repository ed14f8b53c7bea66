"""The engine watchdog: a worker exits non-zero soon after vLLM's engine dies, so the
platform replaces it, instead of staying up, taking jobs and failing every one of them.

With tensor, pipeline or data parallelism the engine is several processes: EngineCore and
one VLLM::Worker_* per rank. The death of any is the engine's. vLLM notices a lost rank
itself (its executor gives the others a few seconds, then fails the running jobs); the
watchdog waits for that, then exits. Before it exits it kills what is left of the engine
and frees the shared memory its processes mapped: a killed process cannot unlink its own,
and each of vLLM's message queues holds 160 MiB of /dev/shm until someone does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import psutil

from llmkit.runtime import logs

log = logs.get("engine")

# vLLM's executor waits about 9 s (5 s, then SIGTERM, then SIGKILL) for the other ranks
# before it fails the jobs; past this the watchdog stops waiting for vLLM to notice.
RANK_GRACE_S = 20.0


def exit_when_engine_dies(engine, stopping: threading.Event, interval=1.0):
    """Watch ``engine`` (vLLM's, running) from a thread. ``stopping`` is set on a requested
    shutdown, when vLLM stops its engine on purpose."""
    processes = EngineProcesses()

    def watch():
        lost_at = None
        while not engine.errored:
            if lost_at is None and processes.lost():
                lost_at = time.monotonic()
            if lost_at is not None and time.monotonic() - lost_at > RANK_GRACE_S:
                break
            time.sleep(interval)
        if stopping.is_set():
            return
        log.error(f"vLLM engine died{processes.how_it_died()}: exiting so the platform "
                  "replaces this worker")
        time.sleep(2 * interval)  # let the failed jobs' results go out first
        processes.clean_up()
        os._exit(1)

    threading.Thread(target=watch, name="engine-watchdog", daemon=True).start()


class EngineProcesses:
    """vLLM's engine processes under this one, and the shared memory they map, as they are
    once the engine runs."""

    def __init__(self):
        # Direct children, kept from multiprocessing: their exit codes say how they ended.
        self.children = multiprocessing.active_children()
        self.names = {}  # vLLM names its processes: VLLM::EngineCore, VLLM::Worker_TP1
        for process in psutil.Process().children(recursive=True):
            if (name := _name(process)).startswith("VLLM::"):
                self.names[process] = name.removeprefix("VLLM::")
        self.processes = list(self.names)
        self.segments = set()
        for process in [psutil.Process(), *self.processes]:
            try:
                self.segments |= {m.path for m in process.memory_maps()
                                  if m.path.startswith("/dev/shm/")}
            except psutil.Error:
                pass
        self.first_lost = None

    def lost(self) -> bool:
        """Whether any engine process has ended; the first to end is remembered."""
        for process in self.processes:
            if not _alive(process):
                self.first_lost = self.first_lost or process
                return True
        return False

    def how_it_died(self) -> str:
        """" (Worker_TP1, pid 81, ended first; EngineCore exited with code 1)": which
        process ended first, and how the direct children ended; "" when none did."""
        self.lost()
        ends = []
        first = self.first_lost
        if first is not None and first.pid not in {c.pid for c in self.children}:
            ends.append(f"{self.names[first]} (pid {first.pid}) ended first")
        for process in self.children:
            process.join(timeout=0.5)  # a process vLLM has not waited for yet
            ends += [f"{process.name} {end}"] if (end := _end(process.exitcode)) else []
        return f" ({'; '.join(ends)})" if ends else ""

    def clean_up(self):
        """Kill what is left of the engine; unlink the shared memory it mapped."""
        left = [p for p in self.processes if _alive(p)]
        for process in left:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=5)
        for path in self.segments:
            try:
                os.unlink(path)
            except OSError:
                pass


def _name(process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def _alive(process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _end(code) -> str:
    """How a process with this exit code ended; "" while it runs or when it exited 0."""
    if code is None or code == 0:
        return ""
    if code > 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
    hint = (": out of memory? The kernel's OOM killer sends SIGKILL"
            if code == -signal.SIGKILL else "")
    return f"was killed by {name}{hint}"
