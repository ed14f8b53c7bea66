"""Child processes that do not outlive what started them, and how to end a whole family.

Used by the endpoint's worker supervisor (workers die with the server) and by the
endpoint harness (the server dies with its test, demo or benchmark).
"""

from __future__ import annotations

import ctypes
import os
import signal

import psutil

try:  # Linux: a signal to the child when its parent dies, however it dies.
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """``preexec_fn`` for a child: ``sig`` when ``parent_pid`` dies.

    Runs in the child between fork and exec: keep it to plain calls. (Linux sends the
    signal when the *thread* that started the child ends: start it from one that lives
    as long as the child should.)
    """
    if _LIBC is not None and hasattr(_LIBC, "prctl"):
        _LIBC.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent_pid:  # the parent died before prctl
            os.kill(os.getpid(), sig)


def signal_process(pid: int, sig: int, group: bool = False) -> None:
    """Send ``sig`` to ``pid`` (or its process group); a process already gone is fine."""
    try:
        if group:
            os.killpg(pid, sig)  # start_new_session: the group id is the leader's pid
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pids) -> list[int]:
    """The pids that still run (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def tagged(name: str, value: str) -> list[psutil.Process]:
    """Every process of this user whose environment has ``name=value``.

    A variable set when a process tree is started is inherited by all of it, also by
    processes that left its process group or were re-parented to init.
    """
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(name) == value:
                found.append(proc)
        except psutil.Error:  # gone, or another user's
            pass
    return found


def kill_tagged(name: str, value: str) -> list[int]:
    """SIGKILL every process tagged ``name=value``; returns their pids."""
    procs = tagged(name, value)
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [proc.pid for proc in procs]
