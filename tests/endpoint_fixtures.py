"""Fixtures for the local endpoint: the server as a subprocess, fake and real workers.

Loaded with ``pytest_plugins = ["endpoint_fixtures"]`` so that the session-scoped
live endpoint (one real vLLM worker on the tiny model) is shared by every module.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from llmkit.endpoint import worker_key
from llmkit.paths import REPO_ROOT

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")

# A worker that needs no vLLM: the SDK's production loop around a toy async handler.
FAKE_HANDLER = '''
import asyncio, os, runpod

async def handler(job):
    inp = job["input"]
    if inp.get("fail"):
        yield {"error": inp["fail"]}
        return
    if inp.get("exit"):
        os._exit(int(inp["exit"]))
    for i in range(inp.get("chunks", 3)):
        await asyncio.sleep(inp.get("delay", 0.05))
        yield {"text": f"c{i} "}

if __name__ == "__main__":
    print("fake worker starting in", os.getcwd(), flush=True)
    runpod.serverless.start({
        "handler": handler,
        "concurrency_modifier": lambda c: int(os.environ.get("CONCURRENCY_MODIFIER", "1")),
        "return_aggregate_stream": True,
    })
'''


class Endpoint:
    """A running ``python -m llmkit.endpoint`` and a small client for it."""

    def __init__(self, args: list[str], log_path: Path, api_key: str, endpoint_id: str,
                 env: dict | None = None) -> None:
        self.api_key, self.endpoint_id, self.log_path = api_key, endpoint_id, log_path
        self._terminated = False
        full_env = {**os.environ, "MAX_MODEL_LEN": "2048", "HF_HUB_OFFLINE": "1",
                    **(env or {})}
        full_env.pop("RUNPOD_API_KEY", None)
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmkit.endpoint", "--port", "0", "--api-key", api_key,
             "--endpoint-id", endpoint_id, *args],
            cwd=REPO_ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        match = self.wait_for_log(r"base url: (\S+)", timeout=60)
        self.base = match.group(1)                     # http://127.0.0.1:PORT/v2
        self.root = self.base[: -len("/v2")]
        self.url = f"{self.base}/{endpoint_id}"
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.worker_key = worker_key(api_key, endpoint_id)

    # ---- client side ---------------------------------------------------------------
    def call(self, method: str, op: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", self.headers)
        kwargs.setdefault("timeout", 120)
        return requests.request(method, f"{self.url}/{op}", **kwargs)

    def json(self, method: str, op: str, **kwargs) -> dict:
        reply = self.call(method, op, **kwargs)
        assert reply.status_code == 200, (reply.status_code, reply.text)
        return reply.json()

    def run(self, job_input, **extra) -> str:
        return self.json("POST", "run", json={"input": job_input, **extra})["id"]

    def status(self, job_id: str) -> dict:
        return self.json("GET", f"status/{job_id}")

    def wait_status(self, job_id: str, statuses=FINAL, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = self.status(job_id)
            if state["status"] in statuses:
                return state
            assert time.monotonic() < deadline, f"job stuck: {state}\n{self.log_tail()}"
            time.sleep(0.1)

    def health(self) -> dict:
        return self.json("GET", "health")

    def workers(self) -> list[dict]:
        return self.json("GET", "workers")["workers"]

    def wait_ready(self, count: int = 1, timeout: float = 300) -> None:
        """Until ``count`` workers poll for jobs (a vLLM worker needs about a minute)."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.health()["workers"]
            if workers["idle"] + workers["running"] >= count:
                return
            assert self.proc.poll() is None, f"endpoint exited\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"no ready worker\n{self.log_tail()}"
            time.sleep(0.5)

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.health()["jobs"]["inProgress"] or self.health()["workers"]["running"]:
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.2)

    # ---- the log -------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log_path.read_text(errors="replace"))
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"endpoint exited ({self.proc.returncode}) waiting for "
                                     f"{pattern!r}\n{self.log_tail()}")
            assert time.monotonic() < deadline, f"no {pattern!r} in log\n{self.log_tail()}"
            time.sleep(0.1)

    # ---- shutdown ------------------------------------------------------------------
    def terminate(self) -> None:
        """SIGTERM (like Ctrl-C): the endpoint drains its workers and exits."""
        self._terminated = True
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            if not self._terminated:
                self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class FakeWorker:
    """Speaks the worker side of the protocol by hand, as the SDK does."""

    def __init__(self, endpoint: Endpoint, worker_id: str = "hand-1") -> None:
        self.endpoint, self.id = endpoint, worker_id
        self.prefix = f"{endpoint.root}/v2/{endpoint.endpoint_id}"
        self.headers = {"Authorization": endpoint.worker_key}  # raw key, as the SDK sends

    def _url(self, route: str, extra: str = "") -> str:
        return f"{self.prefix}/{route}?gpu=local{extra}"

    def take(self, batch: int = 1, timeout: float = 30) -> requests.Response:
        if batch > 1:
            url = self._url(f"job-take-batch/{self.id}", f"&batch_size={batch}&job_in_progress=0")
        else:
            url = self._url(f"job-take/{self.id}", "&job_in_progress=0")
        return requests.get(url, headers=self.headers, timeout=timeout)

    def stream(self, job_id: str, chunk) -> requests.Response:
        # JSON text labelled as a form, exactly as the SDK posts it.
        return requests.post(self._url(f"job-stream/{self.id}/{job_id}", "&isStream=false"),
                             data=json.dumps({"output": chunk}), timeout=30, headers={
                                 **self.headers,
                                 "Content-Type": "application/x-www-form-urlencoded"})

    def done(self, job_id: str, result: dict) -> requests.Response:
        return requests.post(self._url(f"job-done/{self.id}/{job_id}", "&isStream=true"),
                             data=json.dumps(result), headers=self.headers, timeout=30)

    def stops(self, timeout: float = 30) -> requests.Response:
        return requests.get(self._url(f"job-stop/{self.id}"), headers=self.headers,
                            timeout=timeout)

    def ping(self, job_ids: list[str]) -> requests.Response:
        return requests.get(self._url(f"ping/{self.id}"), headers=self.headers, timeout=30,
                            params={"job_id": ",".join(job_ids), "runpod_version": "test"})


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


def stream_input(tokens: int, stream: bool = True, prompt: str = "hello world") -> dict:
    """A job that generates exactly ``tokens`` tokens (min_tokens = max_tokens)."""
    return {"prompt": prompt, "answerType": "stream" if stream else "normal",
            "sampling_params": {"max_tokens": tokens, "min_tokens": tokens}}


@pytest.fixture(scope="session")
def fake_handler(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake-handler") / "handler.py"
    path.write_text(FAKE_HANDLER)
    return path


@pytest.fixture(scope="session")
def live_endpoint(tmp_path_factory, tiny_model_dir, handler_path):
    """One real worker (vLLM, tiny model, CONCURRENCY_MODIFIER=4), shared by all modules.

    Tests must leave it idle. A test that kills the worker uses ``live_to_kill``.
    """
    log = tmp_path_factory.mktemp("live-endpoint") / "endpoint.log"
    endpoint = Endpoint(["--workers", "1", "--concurrency", "4", "--model", str(tiny_model_dir),
                         "--handler", str(handler_path)], log, "live-key", "live")
    try:
        endpoint.wait_ready(timeout=600)  # minutes when the CPU is shared
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
def live(live_endpoint) -> Endpoint:
    """The live endpoint, with a ready worker and nothing running (waits if needed)."""
    live_endpoint.wait_ready(timeout=400)
    live_endpoint.wait_idle()
    return live_endpoint


@pytest.fixture
def live_to_kill(live) -> Endpoint:
    """The live endpoint, for a test that kills its worker: such tests run last."""
    return live


def pytest_collection_modifyitems(config, items):
    """Run the tests that kill the shared worker after all others, whatever order the
    files were named in: its replacement needs another engine start."""
    last = [item for item in items if "live_to_kill" in getattr(item, "fixturenames", ())]
    items[:] = [item for item in items if item not in last] + last
