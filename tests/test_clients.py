"""The clients against the local endpoint: the kit's scripts/stream_client_side.py and
the runpod SDK's own runpod.Endpoint, unmodified."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from endpoint_fixtures import FakeWorker

from llmkit.endpoint.config import DEV_API_KEY
from llmkit.endpoint.harness import EndpointClient, EndpointProcess
from llmkit.endpoint.jobs import FINAL
from llmkit.job_inputs import exact_tokens
from llmkit.paths import REPO_ROOT

pytest_plugins = ["endpoint_fixtures"]


def _load_client():
    spec = importlib.util.spec_from_file_location(
        "stream_client_side", REPO_ROOT / "scripts" / "stream_client_side.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = _load_client()


def test_the_standalone_client_names_the_endpoints_final_states_and_dev_key():
    """The client does not import llmkit (it is copied to laptops): its copies must match."""
    assert set(client.FINAL) == FINAL
    assert client.LOCAL_DEV_KEY == DEV_API_KEY


def run_client(endpoint: EndpointClient, *args: str, out=None) -> tuple[int, str, str]:
    out = out or io.StringIO()
    err = io.StringIO()
    code = client.main(["--base-url", endpoint.base, "--endpoint-id", endpoint.endpoint_id,
                        "--api-key", endpoint.api_key, "--poll-interval", "0.1", *args],
                       out=out, err=err)
    return code, out.getvalue() if isinstance(out, io.StringIO) else "", err.getvalue()


@pytest.fixture(scope="module")
def queue_ep(tmp_path_factory):
    with EndpointProcess(workers=0, endpoint_id="clients", api_key="client-key",
                         log_path=tmp_path_factory.mktemp("clients") / "log") as endpoint:
        yield endpoint


def _client_in_thread(endpoint: EndpointClient, *args: str):
    result = {}

    def target():
        result["code"], result["out"], result["err"] = run_client(endpoint, *args)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


# ---- the kit's client, on every final state (a hand-played worker, no engine) -------

def test_client_streams_then_ends_on_completed(queue_ep):
    thread, result = _client_in_thread(queue_ep, "--prompt", "hi")
    worker = FakeWorker(queue_ep, "c-ok")
    job = worker.take().json()
    assert job["input"]["answerType"] == "stream"
    assert job["input"]["messages"] == [{"role": "user", "content": "hi"}]
    worker.stream(job["id"], {"text": "Hello"})
    worker.stream(job["id"], {"text": " there"})
    worker.done(job["id"], {"output": [{"text": "Hello"}, {"text": " there"}]})
    thread.join(30)
    assert result["code"] == 0 and result["out"] == "Hello there\n"
    assert f"[job {job['id']} COMPLETED in" in result["err"] and "2 chunks" in result["err"]


@pytest.mark.parametrize("mode", ["stream", "run"])
def test_client_prints_the_fields_a_handler_yields_beside_text(queue_ep, mode):
    """A handler may yield more than "text" (the word_count recipe): the client shows it."""
    thread, result = _client_in_thread(queue_ep, "--mode", mode, "--prompt", "hi")
    worker = FakeWorker(queue_ep, f"c-extra-{mode}")
    job = worker.take().json()
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    chunks = [{"text": "Hello there", "usage": usage, "finish_reason": "stop",
               "stop_reason": "\n"}, {"word_count": 2}]
    for chunk in chunks:
        worker.stream(job["id"], chunk)
    worker.done(job["id"], {"output": chunks})
    thread.join(30)
    assert result["code"] == 0, result
    assert result["out"] == 'Hello there\n{"word_count": 2}\n', result["out"]
    # The usage and finish reason go with the job's summary, on stderr.
    assert '; 7 prompt + 2 answer tokens, finish_reason stop ("\\n")]' in result["err"], \
        result["err"]


@pytest.mark.parametrize("ending, status, message", [
    ("fail", "FAILED", "input.prompt must not be empty"),
    ("cancel", "CANCELLED", "the job was cancelled"),
])
def test_client_ends_cleanly_on_failed_and_cancelled(queue_ep, ending, status, message):
    thread, result = _client_in_thread(queue_ep, "--prompt", "hi")
    worker = FakeWorker(queue_ep, f"c-{ending}")
    job = worker.take().json()
    worker.stream(job["id"], {"text": "part"})
    if ending == "fail":
        worker.done(job["id"], {"error": message})
    else:
        queue_ep.json("POST", f"cancel/{job['id']}")
    thread.join(30)
    assert not thread.is_alive(), "the client hangs on a final state"
    assert result["code"] == 1 and result["out"].startswith("part")
    assert f"[job {job['id']} {status} after" in result["err"] and message in result["err"]


@pytest.mark.parametrize("mode", ["run", "runsync"])
def test_client_normal_modes_end_on_failed(queue_ep, mode):
    thread, result = _client_in_thread(queue_ep, "--mode", mode, "--wait", "1000")
    worker = FakeWorker(queue_ep, f"c-{mode}")
    job = worker.take().json()
    assert job["input"]["answerType"] == "normal"
    time.sleep(1.5)  # /runsync has answered IN_PROGRESS: the client polls /status
    worker.done(job["id"], {"error": "CUDA out of memory"})
    thread.join(30)
    assert result["code"] == 1 and "FAILED" in result["err"]
    assert "CUDA out of memory" in result["err"]


@pytest.mark.service  # starts the local endpoint
def test_client_ends_cleanly_on_timed_out(tmp_path):
    with EndpointProcess(workers=0, endpoint_id="slow", args=["--execution-timeout", "1"],
                         log_path=tmp_path / "log") as endpoint:
        thread, result = _client_in_thread(endpoint, "--prompt", "hi")
        FakeWorker(endpoint, "c-slow").take()  # and never answers
        thread.join(30)
        assert result["code"] == 1
        assert "TIMED_OUT after" in result["err"]
        assert "job ran past its execution timeout of 1 s" in result["err"]


def test_client_reports_http_errors(queue_ep, tmp_path):
    code, _, err = run_client(queue_ep, "--api-key", "wrong")
    assert code == 1 and "HTTP 401" in err and "check --api-key" in err
    code, _, err = run_client(queue_ep, "--endpoint-id", "nope")
    assert code == 1 and "HTTP 404" in err and "check --endpoint-id" in err
    code, _, err = run_client(queue_ep, "--base-url", "http://127.0.0.1:9/v2")
    assert code == 1 and "cannot reach" in err


def test_client_takes_its_settings_from_the_environment(queue_ep):
    env = {**os.environ, "RUNPOD_ENDPOINT_BASE_URL": queue_ep.base,
           "RUNPOD_ENDPOINT_ID": queue_ep.endpoint_id, "RUNPOD_API_KEY": queue_ep.api_key}
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / "stream_client_side.py"),
                             "--mode", "run", "--raw", "--prompt", "hi"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = FakeWorker(queue_ep, "c-env")
    job = worker.take(timeout=60).json()
    assert job["input"]["prompt"] == "hi"
    worker.done(job["id"], {"output": [{"text": "from env"}]})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "from env\n"


def test_runpod_sdk_finds_the_endpoint_through_the_environment(queue_ep):
    """RUNPOD_ENDPOINT_BASE_URL is read when runpod is imported: use a fresh process."""
    code = ("import json, runpod; runpod.api_key = 'client-key'; "
            "print(json.dumps(runpod.Endpoint('clients').health()))")
    env = {**os.environ, "RUNPOD_ENDPOINT_BASE_URL": queue_ep.base}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    health = json.loads(result.stdout)
    # The platform's two keys, and the local endpoint's handler list (empty: no worker).
    assert set(health) == {"jobs", "workers", "handlers"} and health["handlers"] == []


# ---- against the real worker (vLLM, tiny model) -------------------------------------

@pytest.mark.engine
def test_client_stream_mode_prints_text_as_it_arrives(live):
    class Recorder(io.StringIO):
        in_progress_at_first_write = None

        def write(self, text):
            if self.in_progress_at_first_write is None and text:
                self.in_progress_at_first_write = live.health()["jobs"]["inProgress"]
            return super().write(text)

    out = Recorder()
    code, _, err = run_client(live, "--raw", "--prompt", "hello", "--max-tokens", "300",
                              "--temperature", "1", out=out)
    assert code == 0, err
    assert out.in_progress_at_first_write == 1, "text was printed only after the job ended"
    assert len(out.getvalue()) > 50 and "COMPLETED" in err


@pytest.mark.engine
@pytest.mark.parametrize("mode", ["runsync", "run"])
def test_client_normal_modes(live, mode):
    code, out, err = run_client(live, "--mode", mode, "--raw", "--prompt", "Hi", "--max-tokens",
                                "16", "--temperature", "1")
    assert code == 0, err
    assert out.strip() and "COMPLETED in" in err


@pytest.mark.engine
def test_client_reports_the_handlers_error(live):
    bad = {"prompt": "hi", "sampling_params": {"top_p": 0}}
    code, out, err = run_client(live, "--input", json.dumps(bad))
    assert code == 1 and out.strip() == ""
    assert "FAILED" in err and "input.sampling_params.top_p must be in (0, 1], got 0" in err


@pytest.fixture
def sdk(live, monkeypatch):
    """runpod.Endpoint as a user would set it up: the key, and the base URL (which the
    SDK reads from RUNPOD_ENDPOINT_BASE_URL at import)."""
    import runpod

    monkeypatch.setattr(runpod, "api_key", live.api_key)
    monkeypatch.setattr(runpod, "endpoint_url_base", live.base)
    return runpod.Endpoint(live.endpoint_id)


@pytest.mark.engine
def test_sdk_run_status_output(sdk, live):
    job = sdk.run(exact_tokens(30, stream=False))
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    output = job.output(timeout=60)
    assert job.status() == "COMPLETED"
    assert isinstance(output, list) and len(output) == 1 and output[0]["text"]


@pytest.mark.engine
def test_sdk_run_sync(sdk):
    output = sdk.run_sync({"input": exact_tokens(30, stream=False)}, timeout=60)
    assert isinstance(output, list) and output[0]["text"]


@pytest.mark.engine
def test_sdk_stream(sdk, live):
    job = sdk.run(exact_tokens(400))
    chunks = list(job.stream())  # polls /stream each second until the job is done
    assert len(chunks) >= 2 and all(isinstance(c["text"], str) for c in chunks)
    assert live.status(job.job_id)["output"] == chunks


@pytest.mark.engine
def test_sdk_cancel(sdk, live):
    job = sdk.run(exact_tokens(2000))
    live.wait_status(job.job_id, ("IN_PROGRESS",))
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    assert job.status() == "CANCELLED"
    live.wait_for_log(rf'"requestId": "{job.job_id}", "message": "job {job.job_id} stopped: '
                      rf'vLLM request \S+ aborted', timeout=30)


@pytest.mark.engine
def test_sdk_health_and_purge_queue(sdk):
    health = sdk.health()
    assert health["workers"]["idle"] + health["workers"]["running"] == 1
    assert set(health["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert health["jobs"]["completed"] >= 1
    assert sdk.purge_queue() == {"removed": 0, "status": "completed"}
