"""The local endpoint's HTTP API, both sides, with no worker process: the tests play
the worker by hand, as the runpod SDK would. Fast: no vLLM, no SDK."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time

import pytest
import requests
from endpoint_fixtures import FakeWorker

from llmkit.endpoint import worker_env, worker_key
from llmkit.endpoint.harness import EndpointProcess

pytest_plugins = ["endpoint_fixtures"]
MB = 1024 * 1024


@pytest.fixture(scope="module")
def queue_endpoint(tmp_path_factory):
    endpoint = EndpointProcess(workers=0, endpoint_id="api", api_key="api-key",
                               log_path=tmp_path_factory.mktemp("api") / "endpoint.log")
    yield endpoint.start()
    assert endpoint.stop() == 0


@pytest.fixture
def ep(queue_endpoint) -> EndpointProcess:
    """The queue-only endpoint, with an empty queue."""
    queue_endpoint.json("POST", "purge-queue")
    return queue_endpoint


def test_wrong_or_missing_key_gives_401(ep):
    job_id = ep.run({"prompt": "x"})
    for method, op in [("POST", "run"), ("POST", "runsync?wait=1000"), ("GET", f"status/{job_id}"),
                       ("GET", f"stream/{job_id}"), ("POST", f"cancel/{job_id}"),
                       ("GET", "health"), ("POST", "purge-queue")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "api-ke"}):
            reply = ep.call(method, op, headers=headers, json={"input": {}})
            assert reply.status_code == 401, (method, op, headers)
            assert "unauthorized" in reply.json()["error"]
    # The platform takes the key with or without "Bearer".
    assert ep.call("GET", "health", headers={"Authorization": "api-key"}).status_code == 200
    assert ep.status(job_id)["status"] == "IN_QUEUE"  # nothing above touched it


def test_unknown_job_or_endpoint_gives_404(ep):
    for method, op in [("GET", "status/nope"), ("GET", "stream/nope"), ("POST", "cancel/nope"),
                       ("POST", "retry/nope")]:
        reply = ep.call(method, op)
        assert reply.status_code == 404
        assert reply.json() == {"error": "job 'nope' not found: unknown id, or its result expired"}
    reply = requests.get(f"{ep.base}/other/health", headers=ep.headers, timeout=10)
    assert reply.status_code == 404 and "endpoint 'other' not found" in reply.json()["error"]
    reply = ep.call("GET", "no-such-route")
    assert reply.status_code == 404 and "no such route" in reply.json()["error"]


@pytest.mark.parametrize("body, message", [
    (b"not json", "request body is not valid JSON"),
    (b"", "request body is empty"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b'{"prompt": "hi"}', "unknown field 'prompt'"),
    (b'{"policy": {}}', 'request body needs an "input" field'),
    (b'{"input": {}, "policy": {"executionTimeout": 100}}',
     "policy.executionTimeout must be an integer number of milliseconds from 5000"),
    (b'{"input": {}, "policy": {"executionTimeout": "10s"}}', "policy.executionTimeout must be"),
    (b'{"input": {}, "policy": {"ttl": 5}}', "policy.ttl must be"),
    (b'{"input": {}, "policy": {"timeout": 5}}', "unknown field policy.timeout"),
    (b'{"input": {}, "policy": []}', "policy must be an object"),
    (b'{"input": {}, "webhook": "ftp://x"}', "webhook must be an http:// or https:// URL"),
])
def test_malformed_body_gives_400(ep, body, message):
    for op in ("run", "runsync?wait=1000"):
        reply = ep.call("POST", op, data=body, headers={**ep.headers,
                                                       "Content-Type": "application/json"})
        assert reply.status_code == 400, (op, reply.text)
        assert message in reply.json()["error"]
    assert ep.health()["jobs"]["inQueue"] == 0


@pytest.mark.parametrize("wait", ["abc", "10", "300001"])
def test_runsync_wait_out_of_range_gives_400(ep, wait):
    reply = ep.call("POST", f"runsync?wait={wait}", json={"input": {}})
    assert reply.status_code == 400
    assert "wait must be milliseconds from 1000 to 300000" in reply.json()["error"]


def _body(size: int) -> bytes:
    """A valid job body of exactly ``size`` bytes."""
    head, tail = b'{"input": {"prompt": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_bodies_over_the_platform_limits_give_413(ep):
    headers = {**ep.headers, "Content-Type": "application/json"}
    over_run = ep.call("POST", "run", data=_body(10 * MB + 1), headers=headers)
    assert over_run.status_code == 413
    assert over_run.json() == {"error": "request body is over the 10 MB limit of /run"}
    assert ep.call("POST", "run", data=_body(10 * MB), headers=headers).status_code == 200
    # /runsync allows 20 MB.
    reply = ep.call("POST", "runsync?wait=1000", data=_body(10 * MB + 1), headers=headers)
    assert reply.status_code == 200 and reply.json()["status"] == "IN_QUEUE"
    over_sync = ep.call("POST", "runsync?wait=1000", data=_body(20 * MB + 1), headers=headers)
    assert over_sync.status_code == 413
    assert "20 MB limit of /runsync" in over_sync.json()["error"]
    assert ep.json("POST", "purge-queue") == {"removed": 2, "status": "completed"}


def test_job_life_with_the_platform_reply_shapes(ep):
    worker = FakeWorker(ep, "shape-1")
    reply = ep.json("POST", "run", json={"input": {"prompt": "hi"}})
    assert set(reply) == {"id", "status"} and reply["status"] == "IN_QUEUE"
    job_id = reply["id"]
    assert ep.status(job_id) == {"id": job_id, "status": "IN_QUEUE"}
    time.sleep(0.05)
    taken = worker.take()
    assert taken.status_code == 200 and taken.headers["Content-Type"].startswith(
        "application/json")
    assert taken.json() == {"id": job_id, "input": {"prompt": "hi"}}
    state = ep.status(job_id)
    assert state["status"] == "IN_PROGRESS" and state["workerId"] == "shape-1"
    assert state["delayTime"] >= 50
    assert ep.health()["jobs"]["inProgress"] >= 1
    assert worker.stream(job_id, {"text": "Hel"}).status_code == 200
    assert worker.stream(job_id, {"text": "lo"}).status_code == 200
    # /stream hands out only what is new since the last poll.
    first = ep.json("GET", f"stream/{job_id}")
    assert first["status"] == "IN_PROGRESS"
    assert first["stream"] == [{"output": {"text": "Hel"}}, {"output": {"text": "lo"}}]
    worker.stream(job_id, {"text": "!"})
    assert ep.json("GET", f"stream/{job_id}")["stream"] == [{"output": {"text": "!"}}]
    time.sleep(0.1)
    output = [{"text": "Hel"}, {"text": "lo"}, {"text": "!"}]
    assert worker.done(job_id, {"output": output}).status_code == 200
    state = ep.status(job_id)
    assert state["status"] == "COMPLETED" and state["output"] == output
    assert isinstance(state["delayTime"], int) and state["executionTime"] >= 100
    last = ep.json("GET", f"stream/{job_id}")
    assert last["status"] == "COMPLETED" and last["stream"] == []


def test_failed_result_carries_the_handlers_error(ep):
    worker = FakeWorker(ep, "fail-1")
    job_id = ep.run({"prompt": "hi"})
    worker.take()
    worker.done(job_id, {"error": "input.prompt must not be empty"})
    state = ep.status(job_id)
    assert state["status"] == "FAILED" and state["error"] == "input.prompt must not be empty"
    assert "output" not in state
    # A failed job can be retried under the same id.
    assert ep.json("POST", f"retry/{job_id}") == {"id": job_id, "status": "IN_QUEUE"}
    assert ep.health()["jobs"]["retried"] >= 1
    assert worker.take().json()["id"] == job_id
    worker.done(job_id, {"output": [{"text": "ok"}]})
    assert ep.status(job_id)["status"] == "COMPLETED"
    assert ep.call("POST", f"retry/{job_id}").status_code == 400


def test_runsync_waits_for_the_result_or_returns_the_state(ep):
    started = time.monotonic()
    reply = ep.json("POST", "runsync?wait=1000", json={"input": {"prompt": "hi"}})
    assert 0.9 < time.monotonic() - started < 5
    assert reply["status"] == "IN_QUEUE" and reply["id"].startswith("sync-")
    ep.json("POST", "purge-queue")

    worker = FakeWorker(ep, "sync-1")
    result = {}
    thread = threading.Thread(target=lambda: result.update(ep.json(
        "POST", "runsync?wait=30000", json={"input": {"prompt": "hi"}})))
    thread.start()
    job = worker.take().json()
    worker.done(job["id"], {"output": [{"text": "done"}]})
    thread.join(10)
    assert result["status"] == "COMPLETED" and result["output"] == [{"text": "done"}]
    assert set(result) >= {"id", "status", "delayTime", "executionTime", "output"}


def test_take_long_polls_and_batches(ep):
    worker = FakeWorker(ep, "poll-1")
    got = {}
    thread = threading.Thread(target=lambda: got.update(reply=worker.take()))
    thread.start()
    time.sleep(0.5)
    job_id = ep.run({"n": 1})
    thread.join(10)
    assert got["reply"].json()["id"] == job_id  # woke up as soon as the job came
    worker.done(job_id, {"output": []})
    ids = [ep.run({"n": i}) for i in range(3)]
    batch = worker.take(batch=2)
    assert [job["id"] for job in batch.json()] == ids[:2]
    single = worker.take()
    assert single.json()["id"] == ids[2]
    for job_id in ids:
        worker.done(job_id, {"output": []})


def test_a_worker_that_hung_up_gets_no_job(ep):
    gone = FakeWorker(ep, "gone-1")
    with pytest.raises(requests.Timeout):
        gone.take(timeout=0.3)  # the worker hangs up while its take is open
    time.sleep(0.2)
    job_id = ep.run({"prompt": "hi"})
    time.sleep(0.6)
    assert ep.status(job_id)["status"] == "IN_QUEUE"  # not lost to the dead connection
    assert FakeWorker(ep, "alive-1").take().json()["id"] == job_id


def test_cancel_queued_and_running_jobs(ep):
    worker = FakeWorker(ep, "cancel-1")
    queued = ep.run({"prompt": "queued"})
    assert ep.json("POST", f"cancel/{queued}") == {"id": queued, "status": "CANCELLED"}
    running = ep.run({"prompt": "running"})
    assert worker.take().json()["id"] == running  # the cancelled job is never handed out
    worker.stream(running, {"text": "a"})
    stops = {}
    thread = threading.Thread(target=lambda: stops.update(reply=worker.stops()))
    thread.start()
    time.sleep(0.3)
    assert ep.json("POST", f"cancel/{running}") == {"id": running, "status": "CANCELLED"}
    thread.join(10)
    assert stops["reply"].json() == {"jobsToStop": [running]}
    # Whatever the worker still sends is ignored; the job stays CANCELLED.
    assert worker.stream(running, {"text": "late"}).json() == {"ignored": "job is CANCELLED"}
    assert worker.done(running, {"output": []}).json() == {"ignored": "job is CANCELLED"}
    state = ep.status(running)
    assert state["status"] == "CANCELLED" and "executionTime" in state
    # ...and since it still works on the job, the stop is repeated.
    assert worker.stops(timeout=15).json() == {"jobsToStop": [running]}
    # Cancelling a finished job changes nothing.
    assert ep.json("POST", f"cancel/{running}")["status"] == "CANCELLED"


def test_worker_posts_are_checked(ep):
    worker, other = FakeWorker(ep, "post-1"), FakeWorker(ep, "post-2")
    job_id = ep.run({"prompt": "hi"})
    worker.take()
    assert other.stream(job_id, {"text": "x"}).status_code == 409  # not its job
    assert worker.stream("nope", {"text": "x"}).status_code == 404
    reply = requests.post(worker._url(f"job-stream/post-1/{job_id}"), data="{}",
                          headers=worker.headers, timeout=10)
    assert reply.status_code == 400
    client_key = requests.get(worker._url("job-take/post-1"), headers=ep.headers, timeout=10)
    assert client_key.status_code == 401  # workers have their own key
    # The key may also come in the URL (a ~/.runpod/config.toml key overrides the header).
    via_url = requests.post(worker._url(f"job-done/post-1/{job_id}", f"&token={ep.worker_key}"),
                            data=json.dumps({"output": []}), timeout=10)
    assert via_url.status_code == 200 and ep.status(job_id)["status"] == "COMPLETED"


def test_purge_queue_removes_only_waiting_jobs(ep):
    worker = FakeWorker(ep, "purge-1")
    running = ep.run({"n": 0})
    worker.take()
    waiting = [ep.run({"n": i}) for i in range(3)]
    assert ep.health()["jobs"]["inQueue"] == 3
    assert ep.json("POST", "purge-queue") == {"removed": 3, "status": "completed"}
    assert ep.health()["jobs"]["inQueue"] == 0
    assert all(ep.status(j)["status"] == "CANCELLED" for j in waiting)
    assert ep.status(running)["status"] == "IN_PROGRESS"
    worker.done(running, {"output": []})


def test_health_has_the_platform_shape(ep):
    health = ep.health()
    assert set(health["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert set(health["workers"]) >= {"idle", "running"}
    assert all(isinstance(v, int) for part in ("jobs", "workers") for v in health[part].values())
    assert isinstance(health["handlers"], list)  # the local extension, beside them


def test_a_workers_handler_report_shows_in_health_and_workers(ep, monkeypatch):
    """What a reloading worker sends (llmkit/runtime/reload.py), through the runtime's own
    ping: which handler it serves, and why its last reload failed."""
    from llmkit.endpoint.worker_api import worker_env
    from llmkit.runtime.lifecycle import ping

    for name, value in worker_env(ep.base, ep.endpoint_id, "reloading-1", ep.api_key).items():
        monkeypatch.setenv(name, value)
    error = "/app/handler.py, line 3: ModuleNotFoundError: No module named 'x'"
    assert ping({"handler": "0123456789ab", "handler_file": "/app/handler.py", "reloads": 2,
                 "reload": "failed", "reload_error": error, "restart_needed": "MAX_MODEL_LEN"})
    mine = [h for h in ep.health()["handlers"] if h["worker"] == "reloading-1"]
    assert mine == [{"worker": "reloading-1", "sha256": "0123456789ab",
                     "lastReloadFailed": True}]
    (worker,) = [w for w in ep.workers() if w["id"] == "reloading-1"]
    assert worker["handler"] == {"sha256": "0123456789ab", "file": "/app/handler.py",
                                 "reloads": 2, "lastReloadFailed": True, "reloadError": error,
                                 "restartNeeded": ["MAX_MODEL_LEN"]}
    ep.wait_for_log(r"reloading-1: handler reload failed, still serving 0123456789ab: "
                    r"/app/handler\.py, line 3", timeout=10)


def test_a_stale_job_list_in_a_ping_is_reported(ep):
    worker = FakeWorker(ep, "stale-1")
    assert worker.ping(["job-from-an-old-run"]).status_code == 200
    ep.wait_for_log(r"stale-1 reports job\(s\) this endpoint never gave it "
                    r"\(job-from-an-old-run\): a stale \.runpod_jobs\.pkl", timeout=10)


def test_webhook_gets_the_final_status(ep):
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = ep.json("POST", "run", json={"input": {"p": 1}, "webhook": url})["id"]
        worker = FakeWorker(ep, "hook-1")
        worker.take()
        worker.done(job_id, {"output": [{"text": "hi"}]})
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received and received[0]["id"] == job_id
        assert received[0]["status"] == "COMPLETED" and received[0]["output"] == [{"text": "hi"}]
    finally:
        server.shutdown()


@pytest.mark.service  # starts the local endpoint
def test_execution_timeout_gives_timed_out_and_stops_the_job(tmp_path):
    endpoint = EndpointProcess(workers=0, endpoint_id="t", args=["--execution-timeout", "1"],
                               log_path=tmp_path / "log").start()
    try:
        worker = FakeWorker(endpoint, "slow-1")
        job_id = endpoint.run({"prompt": "hi"})
        worker.take()
        worker.stream(job_id, {"text": "a"})
        stops = worker.stops(timeout=15)  # long-polls until the timeout strikes
        assert stops.json() == {"jobsToStop": [job_id]}
        state = endpoint.status(job_id)
        assert state["status"] == "TIMED_OUT"
        assert state["error"] == "job ran past its execution timeout of 1 s"
        assert 900 <= state["executionTime"] < 5000
        assert endpoint.health()["jobs"]["failed"] == 1
        assert worker.done(job_id, {"output": []}).json() == {"ignored": "job is TIMED_OUT"}
    finally:
        assert endpoint.stop() == 0


def test_worker_env_has_what_the_sdk_needs():
    env = worker_env("http://127.0.0.1:8000/v2", "ep1", "w7", api_key="secret-client-key")
    assert env["RUNPOD_WEBHOOK_GET_JOB"].startswith("http://127.0.0.1:8000/v2/ep1/job-take/$ID?")
    assert "/job-done/$RUNPOD_POD_ID/$ID?" in env["RUNPOD_WEBHOOK_POST_OUTPUT"]
    assert "/job-stream/$RUNPOD_POD_ID/$ID?" in env["RUNPOD_WEBHOOK_POST_STREAM"]
    assert "/ping/$RUNPOD_POD_ID?" in env["RUNPOD_WEBHOOK_PING"]
    assert env["RUNPOD_POD_ID"] == "w7"
    assert env["RUNPOD_AI_API_KEY"] == worker_key("secret-client-key", "ep1")
    assert env["RUNPOD_PING_INTERVAL"] == "2000"
    assert env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == env["RUNPOD_SKIP_GPU_CHECK"] == "true"
    assert not any("secret-client-key" in value for value in env.values())
    # The same root with or without /v2.
    assert worker_env("http://127.0.0.1:8000", "ep1", "w7", "k") == worker_env(
        "http://127.0.0.1:8000/v2/", "ep1", "w7", "k")


def test_cli_prints_worker_env(repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "llmkit.endpoint", "--port", "9123", "--endpoint-id", "e",
         "--api-key", "k", "--print-worker-env", "w1"],
        capture_output=True, text=True, timeout=60, cwd=repo_root)
    assert result.returncode == 0, result.stderr
    lines = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.split("\n")
                 if line)
    assert lines["RUNPOD_WEBHOOK_GET_JOB"] == (
        f"'http://127.0.0.1:9123/v2/e/job-take/$ID?gpu=local&token={worker_key('k', 'e')}'")
    assert lines["RUNPOD_POD_ID"] == "w1"
