"""Worker processes under the endpoint: the runpod SDK's real production loop around a
toy handler (no vLLM, so each worker starts in seconds). Covers the SDK's gotchas:
stale .runpod_jobs.pkl, orphaned heartbeat, jobs handed out during shutdown, a
worker that outlives the server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from llmkit.endpoint import worker_env
from llmkit.endpoint.harness import EndpointProcess
from llmkit.processes import alive

pytest_plugins = ["endpoint_fixtures"]


@pytest.fixture(scope="module")
def sdk_endpoint(tmp_path_factory, fake_handler, tiny_model_dir):
    with EndpointProcess(workers=1, concurrency=2, handler=fake_handler, model=tiny_model_dir,
                         endpoint_id="sdk", log_path=tmp_path_factory.mktemp("sdk") / "log") \
            as endpoint:
        yield endpoint


@pytest.fixture
def sdk(sdk_endpoint) -> EndpointProcess:
    sdk_endpoint.wait_workers(timeout=120)
    sdk_endpoint.wait_idle()
    return sdk_endpoint


def _ready_worker(endpoint: EndpointProcess) -> dict:
    return next(w for w in endpoint.workers() if w["state"] == "ready")


def test_worker_streams_through_the_sdk_loop(sdk):
    job_id = sdk.run({"chunks": 6, "delay": 0.3})
    seen, states = [], set()
    while True:
        part = sdk.json("GET", f"stream/{job_id}")
        seen += [item["output"] for item in part["stream"]]
        states.add((part["status"], bool(seen)))
        if part["status"] == "COMPLETED":
            break
    assert ("IN_PROGRESS", True) in states  # chunks arrived before the job ended
    assert seen == [{"text": f"c{i} "} for i in range(6)]
    assert sdk.status(job_id)["output"] == seen  # return_aggregate_stream


def test_handler_error_fails_the_job_and_the_worker_goes_on(sdk):
    bad = sdk.wait_status(sdk.run({"fail": "input.prompt must be a string"}))
    assert bad["status"] == "FAILED" and bad["error"] == "input.prompt must be a string"
    assert sdk.wait_status(sdk.run({"chunks": 1}))["status"] == "COMPLETED"


def test_worker_runs_in_a_fresh_directory(sdk):
    match = sdk.wait_for_log(r"fake worker starting in (\S+)")
    workdir = Path(match.group(1))
    assert workdir.name.startswith("llmkit-worker-1-")
    assert workdir.parent == Path(tempfile.gettempdir())
    assert sdk.wait_status(sdk.run({"chunks": 1}))["status"] == "COMPLETED"


def test_cancel_reaches_the_sdk_task(sdk):
    job_id = sdk.run({"chunks": 200, "delay": 0.05})
    sdk.wait_status(job_id, ("IN_PROGRESS",))
    time.sleep(0.5)
    assert sdk.json("POST", f"cancel/{job_id}")["status"] == "CANCELLED"
    # The SDK cancelled the job's task: the handler stopped at its next await.
    sdk.wait_for_log(rf'"requestId": "{job_id}", "message": "Job stopped\."', timeout=15)
    assert sdk.status(job_id)["status"] == "CANCELLED"


def test_killed_worker_fails_its_job_and_leaves_no_process(sdk):
    job_id = sdk.run({"chunks": 1000, "delay": 0.05})
    sdk.wait_status(job_id, ("IN_PROGRESS",))
    worker = _ready_worker(sdk)
    family = [p.pid for p in psutil.Process(worker["pid"]).children(recursive=True)]
    assert family, "the SDK's heartbeat child should be running"
    workdir = Path(sdk.wait_for_log(rf"started \(pid {worker['pid']}, working directory "
                                    r"(\S+)\)").group(1))
    os.kill(worker["pid"], signal.SIGKILL)
    state = sdk.wait_status(job_id, timeout=15)
    assert state["status"] == "FAILED"
    assert state["error"] == f"worker {worker['id']} was killed by SIGKILL while running this job"
    assert sdk.health()["workers"]["unhealthy"] == 1
    deadline = time.monotonic() + 10
    while alive(family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(family), "the heartbeat child outlived its worker"
    assert not workdir.exists()
    # A replacement starts (in a new directory) and the queue goes on.
    sdk.wait_workers(timeout=120)
    assert sdk.health()["workers"]["unhealthy"] == 0
    assert sdk.wait_status(sdk.run({"chunks": 1}))["status"] == "COMPLETED"
    ids = [w["id"] for w in sdk.workers()]
    assert ids[:2] == ["worker-1", "worker-1.1"]


def test_a_worker_exiting_mid_job_fails_the_job(sdk):
    state = sdk.wait_status(sdk.run({"exit": 3}), timeout=30)
    assert state["status"] == "FAILED" and "exited with code 3 while running this job" in \
        state["error"]
    sdk.wait_workers(timeout=120)
    assert sdk.wait_status(sdk.run({"chunks": 1}))["status"] == "COMPLETED"


@pytest.mark.service  # starts the local endpoint
def test_a_worker_that_cannot_start_is_reported(tmp_path, tiny_model_dir):
    handler = tmp_path / "handler.py"
    handler.write_text('raise SystemExit("MODEL is not set: point it at a model folder")\n')
    endpoint = EndpointProcess(workers=1, handler=handler, model=tiny_model_dir,
                               endpoint_id="broken", log_path=tmp_path / "log").start()
    try:
        endpoint.wait_for_log(r"worker-1 exited with code 1 before it took any job; not "
                              r"restarting it\. Its last output:\nMODEL is not set", timeout=60)
        assert endpoint.health()["workers"]["unhealthy"] == 1
        assert endpoint.run({"p": 1})  # the server keeps the queue
        assert endpoint.health()["jobs"]["inQueue"] == 1
    finally:
        assert endpoint.stop() == 0


def test_shutdown_drains_workers_and_stops_what_ran(tmp_path, fake_handler, tiny_model_dir):
    endpoint = EndpointProcess(workers=1, concurrency=2, handler=fake_handler,
                               model=tiny_model_dir, endpoint_id="drain",
                               log_path=tmp_path / "log").start()
    endpoint.wait_workers(timeout=120)
    running = endpoint.run({"chunks": 1000, "delay": 0.05})
    endpoint.wait_status(running, ("IN_PROGRESS",))
    time.sleep(0.5)  # the worker has a free slot: its take poll is open
    worker = _ready_worker(endpoint)
    family = [worker["pid"]] + [p.pid for p in
                                psutil.Process(worker["pid"]).children(recursive=True)]
    started = time.monotonic()
    endpoint.terminate()
    late = endpoint.run({"chunks": 1})  # arrives while the worker is being shut down
    assert endpoint.stop() == 0
    assert time.monotonic() - started < 15  # the running job was stopped, not waited for
    log = endpoint.log_text()
    assert f"job {late} queued" in log
    assert f"{late} -> " not in log, "a job was handed to a worker that was shutting down"
    assert f"telling worker-1 to stop {running}" in log
    assert not alive(family)


def test_a_worker_does_not_outlive_the_server(tmp_path, fake_handler, tiny_model_dir):
    endpoint = EndpointProcess(workers=1, handler=fake_handler, model=tiny_model_dir,
                               endpoint_id="orphan", log_path=tmp_path / "log").start()
    endpoint.wait_workers(timeout=120)
    worker = _ready_worker(endpoint)
    family = [worker["pid"]] + [p.pid for p in
                                psutil.Process(worker["pid"]).children(recursive=True)]
    os.kill(endpoint.proc.pid, signal.SIGKILL)  # no clean shutdown at all
    endpoint.proc.wait(10)
    deadline = time.monotonic() + 20
    while alive(family) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = alive(family)
    for pid in left:  # do not leave them spinning on a shared machine
        os.kill(pid, signal.SIGKILL)
    endpoint.stop()
    assert not left, "a worker outlived its server (it would poll a dead server forever)"


def test_an_external_worker_with_worker_env(tmp_path, fake_handler):
    """--workers 0: the queue only; a worker started by hand joins with worker_env."""
    endpoint = EndpointProcess(workers=0, endpoint_id="ext", api_key="ext-key",
                               log_path=tmp_path / "log").start()
    workdir = tmp_path / "worker"
    workdir.mkdir()
    env = {**os.environ, **worker_env(endpoint.root, "ext", "by-hand-1", "ext-key"),
           "RUNPOD_DEBUG_LEVEL": "INFO"}
    worker = subprocess.Popen([sys.executable, str(fake_handler)], cwd=workdir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        endpoint.wait_workers(timeout=120)
        state = endpoint.wait_status(endpoint.run({"chunks": 2}))
        assert state["status"] == "COMPLETED" and state["workerId"] == "by-hand-1"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        endpoint.stop()


def test_a_stale_runpod_jobs_pkl_is_diagnosed(tmp_path, fake_handler):
    """What happens without a fresh directory: the SDK inherits a dead job and never
    takes another; the endpoint says why."""
    endpoint = EndpointProcess(workers=0, endpoint_id="stale", api_key="k",
                               log_path=tmp_path / "log").start()
    workdir = tmp_path / "worker"
    workdir.mkdir()
    code = ("import pickle, sys; from runpod.serverless.modules.worker_state import Job; "
            "pickle.dump({Job(id='job-of-a-killed-worker')}, open(sys.argv[1], 'wb'))")
    subprocess.run([sys.executable, "-c", code, str(workdir / ".runpod_jobs.pkl")], check=True,
                   timeout=120)
    env = {**os.environ, **worker_env(endpoint.root, "stale", "stale-1", "k")}
    worker = subprocess.Popen([sys.executable, str(fake_handler)], cwd=workdir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        endpoint.wait_for_log(r"stale-1 reports job\(s\) this endpoint never gave it "
                              r"\(job-of-a-killed-worker\): a stale \.runpod_jobs\.pkl",
                              timeout=120)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        endpoint.stop()


def test_scale_out_to_two_workers(tmp_path, fake_handler, tiny_model_dir):
    endpoint = EndpointProcess(workers=2, handler=fake_handler, model=tiny_model_dir,
                               endpoint_id="scale", log_path=tmp_path / "log").start()
    try:
        endpoint.wait_workers(count=2, timeout=120)
        assert endpoint.health()["workers"]["idle"] == 2
        ids = [endpoint.run({"chunks": 10, "delay": 0.1}) for _ in range(4)]
        states = [endpoint.wait_status(job_id) for job_id in ids]
        assert all(state["status"] == "COMPLETED" for state in states)
        assert {state["workerId"] for state in states} == {"worker-1", "worker-2"}
        workdirs = re.findall(r"started \(pid \d+, working directory (\S+)\)", endpoint.log_text())
        assert len(set(workdirs)) == 2  # each worker has its own
    finally:
        assert endpoint.stop() == 0
