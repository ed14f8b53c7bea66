"""A worker's life on the platform, beyond the job loop: its heartbeat pings, and a worker
that must die dying promptly, having told the platform why (`serve_or_die`).

A start-up error (errors.StartupError) ends the worker with its message alone; anything
else with its traceback. Either way the platform hears "unhealthy" with the reason, as
runpod 1.11 reports it, and the process exits at once: vLLM's threads are not joined.

The standard library only: the local endpoint's toy workers use it without vLLM.
"""

import contextlib
import multiprocessing
import os
import sys
import traceback
import urllib.parse
import urllib.request

from llmkit.runtime import logs
from llmkit.runtime.errors import StartupError

log = logs.get("lifecycle")


def ping(params, timeout=2.0):
    """One GET to the platform's heartbeat URL with ``params`` added. Best effort: returns
    False, never raises, when it cannot be sent (no platform, or it does not answer)."""
    url, key = os.environ.get("RUNPOD_WEBHOOK_PING"), os.environ.get("RUNPOD_AI_API_KEY")
    worker_id = os.environ.get("RUNPOD_POD_ID")
    if not url or url == "PING_NOT_SET" or not key or not worker_id:
        return False
    runpod = sys.modules.get("runpod")
    if "status" not in params and runpod is not None:
        # A heartbeat like the SDK's own: it names the jobs this worker runs, so the
        # platform does not take an extra ping for "none". A copy of the SDK's set (one C
        # call): its get_job_list() reloads the set from disk, racing the job loop.
        from runpod.serverless.modules.worker_state import JobsProgress
        running = list(JobsProgress._instance or ())
        if running:  # the SDK sends none when idle
            params = {"job_id": ",".join(map(str, running)), **params}
    query = urllib.parse.urlencode({
        **params, "runpod_version": getattr(runpod, "__version__", "unknown")})
    url = url.replace("$RUNPOD_POD_ID", worker_id)
    request = urllib.request.Request(url + ("&" if "?" in url else "?") + query,
                                     headers={"Authorization": key})
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
        return True
    except Exception:
        return False


def report_unhealthy(check, reason, timeout=2.0):
    """Tell the platform why this worker is about to exit, as runpod 1.11 does: a ping
    with status=unhealthy, the check's name and the reason."""
    return ping({"status": "unhealthy", "check": check, "reason": reason[:256]}, timeout)


def exit_now(code, check=None, reason=None):
    """End this process now with ``code``: report, flush, kill children, os._exit.

    sys.exit() only raises SystemExit; the interpreter then joins every non-daemon
    thread (vLLM's engine threads among them) and can hang forever.
    """
    if reason:
        (log.error if code else log.info)(f"worker exiting with code {code}: {reason}")
        if code:
            report_unhealthy(check or "start-up", reason)
    for child in multiprocessing.active_children():  # vLLM's engine core, the heartbeat
        with contextlib.suppress(Exception):
            child.kill()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _failed_check(exit):
    """(check name, reason) of a fitness check the SDK exited on, else None.

    runpod 1.10 calls sys.exit(1) inside the except block that caught the check's
    error, so that error is the SystemExit's __context__.
    """
    error = exit.__context__
    if error is None or isinstance(error, SystemExit):
        return None
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    if "run_fitness_checks" not in frames:
        return None
    index = frames.index("run_fitness_checks") + 1
    name = frames[index] if index < len(frames) else "fitness check"
    return name, f"fitness check {name} failed: {type(error).__name__}: {error}"


def serve_or_die(start_worker):
    """Run start_worker(); if it fails, end the process promptly with a non-zero code.

    A clean return (the SDK drained after SIGTERM) or sys.exit(0) ends the process with
    0 at once: its work is done, and the interpreter's own exit would join vLLM's
    threads and run its finalizers.
    """
    try:
        start_worker()
        exit_now(0)
    except SystemExit as exit:
        if exit.code is None or exit.code == 0:
            exit_now(0)
        if isinstance(exit.code, str):  # a message for the user, e.g. a bad setting
            exit_now(1, "start-up", exit.code)
        check = _failed_check(exit)
        if check is not None:
            exit_now(exit.code if isinstance(exit.code, int) else 1, *check)
        exit_now(exit.code if isinstance(exit.code, int) else 1, "start-up",
                 f"exited with {exit.code!r} during start-up")
    except StartupError as error:
        exit_now(1, "start-up", str(error))
    except KeyboardInterrupt:
        exit_now(130)
    except BaseException as error:
        traceback.print_exc()
        exit_now(1, "start-up", f"{type(error).__name__}: {error}")
