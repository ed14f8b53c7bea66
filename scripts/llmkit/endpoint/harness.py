"""Run the local endpoint as a subprocess, talk to it, and stop all of it.

The one way the demo, the soak, the benchmarks and the tests start
``python -m llmkit.endpoint`` with its workers:

    with EndpointProcess(workers=1, model=path, log_path=log) as endpoint:
        endpoint.wait_workers(1)                  # vLLM loads first: about a minute
        state = endpoint.wait_final(endpoint.run({"prompt": "Hi"}))

* Readiness is the endpoint's ``--ready-file`` (JSON written once it listens), not a
  log line.
* The harness picks the API key (a random one unless told), so nothing secret is
  read back from the process.
* Stopping is SIGTERM (the endpoint drains its workers), then SIGKILL for the whole
  tree: every process started under this harness carries ``LLMKIT_HARNESS_RUN`` in
  its environment, so a worker's heartbeat or vLLM engine that left its process
  group is found too. A start that fails half way stops the same way.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import requests

from llmkit.endpoint.auth import worker_key
from llmkit.endpoint.jobs import FINAL
from llmkit.paths import REPO_ROOT
from llmkit.processes import die_with_parent, kill_tagged, signal_process

RUN_TAG = "LLMKIT_HARNESS_RUN"
LISTEN_TIMEOUT_S = 60      # process start to listening: imports only
WORKERS_TIMEOUT_S = 900    # a first vLLM start on a busy 2-core CPU can take minutes
STOP_GRACE_S = 60          # SIGTERM to exit: the endpoint drains its workers
GIVE_UP_AFTER_S = 5        # too few workers left to start for this long: they won't
REQUEST_TIMEOUT_S = 120


class EndpointError(RuntimeError):
    """The endpoint did not start, or did not do what was asked; with its log's end."""


class EndpointClient:
    """The endpoint's client API over HTTP (``requests``): what tests and tools call.

    ``base`` is the ``.../v2`` URL; ``url`` is this endpoint's (``base/endpoint_id``).
    """

    def __init__(self, base: str, endpoint_id: str, api_key: str) -> None:
        self.base, self.endpoint_id, self.api_key = base.rstrip("/"), endpoint_id, api_key
        self.root = self.base.removesuffix("/v2")
        self.url = f"{self.base}/{endpoint_id}"
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.worker_key = worker_key(api_key, endpoint_id)

    # ---- requests and jobs -------------------------------------------------------
    def call(self, method: str, op: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", self.headers)
        kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
        return requests.request(method, f"{self.url}/{op}", **kwargs)

    def json(self, method: str, op: str, **kwargs) -> dict:
        """The reply's JSON; anything but 200 is an EndpointError with the reply."""
        reply = self.call(method, op, **kwargs)
        if reply.status_code != 200:
            raise EndpointError(f"{method} {op}: HTTP {reply.status_code}: {reply.text[:500]}")
        return reply.json()

    def run(self, job_input, **extra) -> str:
        """Submit with /run; the job's id. ``extra``: webhook, policy."""
        return self.json("POST", "run", json={"input": job_input, **extra})["id"]

    def runsync(self, job_input, wait_ms: int = 90000, **extra) -> dict:
        return self.json("POST", f"runsync?wait={wait_ms}", json={"input": job_input, **extra},
                         timeout=wait_ms / 1000 + REQUEST_TIMEOUT_S)

    def status(self, job_id: str) -> dict:
        return self.json("GET", f"status/{job_id}")

    def wait_status(self, job_id: str, statuses: Iterable[str] = FINAL,
                    timeout: float = REQUEST_TIMEOUT_S) -> dict:
        """Poll /status until the job is in one of ``statuses``."""
        statuses = set(statuses)
        deadline = time.monotonic() + timeout
        while True:
            state = self.status(job_id)
            if state["status"] in statuses:
                return state
            self._check(time.monotonic() < deadline, f"job {job_id} still {state['status']} "
                        f"after {timeout:.0f} s (waiting for {'/'.join(sorted(statuses))})")
            time.sleep(0.1)

    def wait_final(self, job_id: str, timeout: float = REQUEST_TIMEOUT_S) -> dict:
        return self.wait_status(job_id, FINAL, timeout)

    def stream(self, job_id: str) -> dict:
        """One /stream poll: the chunks that are new since the last one."""
        return self.json("GET", f"stream/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self.json("POST", f"cancel/{job_id}")

    # ---- the endpoint --------------------------------------------------------------
    def workers(self) -> list[dict]:
        """Every worker the endpoint has seen (a local extension of the API)."""
        return self.json("GET", "workers")["workers"]

    def health(self) -> dict:
        return self.json("GET", "health")

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no job runs and no worker is busy."""
        deadline = time.monotonic() + timeout
        while (health := self.health())["jobs"]["inProgress"] or health["workers"]["running"]:
            self._check(time.monotonic() < deadline, f"not idle after {timeout:.0f} s: {health}")
            time.sleep(0.2)

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise EndpointError(message)


class EndpointProcess(EndpointClient):
    """``python -m llmkit.endpoint`` as a subprocess, with its log in a file.

    ``workers``, ``model``, ``handler``, ``concurrency`` go to the command line as
    ``--workers`` ...; ``args`` adds any other flags. ``env`` is added to this
    process's environment (a real $RUNPOD_API_KEY is removed: workers never get it).
    Construct, then ``start()`` (or use it as a context manager); ``launch()`` alone
    spawns without waiting, to overlap several starts.
    """

    def __init__(self, *, workers: int = 1, model: str | os.PathLike | None = None,
                 handler: str | os.PathLike | None = None, concurrency: int | None = None,
                 endpoint_id: str = "local", api_key: str | None = None,
                 args: Iterable[str] = (), env: dict[str, str] | None = None,
                 log_path: str | os.PathLike | None = None) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="llmkit-endpoint-"))
        self.worker_count = workers
        self.log_path = Path(log_path) if log_path else self._scratch / "endpoint.log"
        self.ready_path = self._scratch / "ready.json"
        self.run_tag = secrets.token_hex(8)
        cli = ["--port", "0", "--endpoint-id", endpoint_id, "--workers", str(workers),
               "--ready-file", str(self.ready_path)]
        if model is not None:
            cli += ["--model", str(model)]
        if handler is not None:
            cli += ["--handler", str(handler)]
        if concurrency is not None:
            cli += ["--concurrency", str(concurrency)]
        self.command = [sys.executable, "-m", "llmkit.endpoint", *cli, *args]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {}),
                    RUN_TAG: self.run_tag}
        self.env.pop("RUNPOD_API_KEY", None)
        # The URLs are known once it listens (start()).
        super().__init__("http://unstarted/v2", endpoint_id, api_key or secrets.token_hex(16))
        self.command += ["--api-key", self.api_key]
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.started_at: float | None = None
        self._terminated = False

    # ---- start -------------------------------------------------------------------
    def launch(self) -> EndpointProcess:
        """Spawn the endpoint (it starts its workers itself); does not wait."""
        if self.proc is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            parent = os.getpid()
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(
                    self.command, cwd=REPO_ROOT, env=self.env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=lambda: die_with_parent(parent))
            self.pid = self.proc.pid
            self.started_at = time.monotonic()
        return self

    def start(self, timeout: float = LISTEN_TIMEOUT_S) -> EndpointProcess:
        """Launch, and wait until it listens. On any failure: stop everything, raise."""
        try:
            self.launch()
            self.wait_listening(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_listening(self, timeout: float = LISTEN_TIMEOUT_S) -> None:
        """Until the ready file appears; then the URLs are set."""
        deadline = time.monotonic() + timeout
        while not self.ready_path.is_file():
            self._check_running()
            self._check(time.monotonic() < deadline,
                        f"the endpoint was not listening after {timeout:.0f} s")
            time.sleep(0.05)
        ready = json.loads(self.ready_path.read_text())
        EndpointClient.__init__(self, ready["url"], ready["endpoint_id"], self.api_key)

    def wait_workers(self, count: int = 1, timeout: float = WORKERS_TIMEOUT_S,
                     progress: Callable[[float], None] | None = None) -> float:
        """Until ``count`` workers poll for jobs; returns the seconds waited. Fails early
        when the endpoint exits, or too few of its workers are left to start.
        ``progress(seconds)`` is called every 15 s meanwhile."""
        started = time.monotonic()
        next_note, short_since = started + 15, None
        while True:
            self._check_running()
            try:
                workers = self.health()["workers"]
            except requests.ConnectionError:  # it exited meanwhile: say so, with its log
                self._check_running()
                raise
            if workers["idle"] + workers["running"] >= count:
                return time.monotonic() - started
            now = time.monotonic()
            if self.worker_count:  # its own workers: are enough of them still coming?
                coming = sum(w["state"] in ("starting", "ready") for w in self.workers())
                short_since = (short_since or now) if coming < count else None
                self._check(short_since is None or now - short_since < GIVE_UP_AFTER_S,
                            f"only {coming} of {count} worker(s) are starting or ready; "
                            "the others failed")
            self._check(now - started < timeout, f"{count} worker(s) not ready after "
                        f"{timeout:.0f} s")
            if progress and now >= next_note:
                progress(now - started)
                next_note += 15
            time.sleep(0.5)

    def _check_running(self) -> None:
        if self.proc is None:
            raise EndpointError("the endpoint was not launched")
        code = self.proc.poll()
        self._check(code is None, f"the endpoint exited with code {code}")

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise EndpointError(f"{message}; the endpoint's log ({self.log_path}) ends:\n"
                                f"{self.log_tail(30)}")

    # ---- the log -----------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 60) -> re.Match:
        """Until ``pattern`` (a regular expression) appears in the log."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.log_text())):
            self._check_running()
            self._check(time.monotonic() < deadline, f"no {pattern!r} in the log")
            time.sleep(0.1)
        return match

    # ---- stop --------------------------------------------------------------------
    def terminate(self) -> None:
        """SIGTERM (like Ctrl-C): the endpoint drains its workers and exits. stop() waits."""
        if self.proc is not None and self.proc.poll() is None:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM and wait ``grace`` s; then SIGKILL its group and every process started
        under it (workers, heartbeats, engines). Returns the endpoint's exit code."""
        if self.proc is not None:
            if not self._terminated:
                self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                signal_process(self.proc.pid, signal.SIGKILL, group=True)
                self.proc.wait(10)
        kill_tagged(RUN_TAG, self.run_tag)
        self.ready_path.unlink(missing_ok=True)
        if self.log_path.parent != self._scratch:  # else the log stays readable
            shutil.rmtree(self._scratch, ignore_errors=True)
        return None if self.proc is None else self.proc.returncode

    def __enter__(self) -> EndpointProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
