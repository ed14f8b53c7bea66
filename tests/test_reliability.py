"""Reliability: hostile input, load, and faults, through the local endpoint to real workers.

Everything here runs the exported handler.py in the runpod SDK's production worker
loop on the real vLLM CPU engine (tiny model).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import openai
import openai_features
import psutil
import pytest
import requests
from endpoint_fixtures import cancel_while_generating, serving_processes

from llmkit import load
from llmkit.endpoint.harness import EndpointProcess
from llmkit.job_inputs import exact_tokens

pytest_plugins = ["endpoint_fixtures"]
pytestmark = pytest.mark.engine

GOOD = exact_tokens(4, "hello", stream=False)
DEEP = {"a": None}
for _ in range(400):  # as deep as Python's own JSON encoder will write
    DEEP = {"a": DEEP}

# (input, what the error must say). Each reaches the worker, which must fail the job.
HOSTILE = [
    (None, "input must be a JSON object, got null"),
    ({}, "exactly one of input.prompt"),
    ([], "input must be a JSON object, got array"),
    ("just a string", "input must be a JSON object, got string"),
    (12, "input must be a JSON object, got int"),
    (True, "input must be a JSON object, got boolean"),
    ({"prompt": None}, "input.prompt must be a string, got null"),
    ({"prompt": 0}, "input.prompt must be a string, got int"),
    ({"prompt": 1.5}, "input.prompt must be a string, got float"),
    ({"prompt": ["hi"]}, "input.prompt must be a string, got array"),
    ({"prompt": {"text": "hi"}}, "input.prompt must be a string, got object"),
    ({"prompt": False}, "input.prompt must be a string, got boolean"),
    ({"prompt": ""}, "input.prompt must not be empty"),
    ({"prompt": " "}, "input.prompt must not be empty"),
    ({"prompt": "\n\t \r\n"}, "input.prompt must not be empty"),
    ({"prompt": "\u3000\u2003"}, "input.prompt must not be empty"),
    ({"prompt": "nul\x00byte"}, "input.prompt must not contain NUL"),
    ({"prompt": "\x00"}, "input.prompt must not contain NUL"),
    ({"prompt": "lone \ud800 surrogate"}, "input.prompt is not valid Unicode"),
    ({"prompt": "\udfff"}, "input.prompt is not valid Unicode"),
    ({"prompt": "x" * 3_000_000}, "input.prompt is 3000000 characters, far over MAX_MODEL_LEN"),
    ({"prompt": "fox dog " * 5000}, "leaves no room to answer"),  # 10002 tokens
    ({"prompt": "hi", "answerType": "STREAM"}, "input.answerType must be 'stream' or 'normal'"),
    ({"prompt": "hi", "answerType": ""}, "input.answerType must be 'stream' or 'normal'"),
    ({"prompt": "hi", "answerType": None}, "input.answerType must be 'stream' or 'normal'"),
    ({"prompt": "hi", "answerType": 1}, "input.answerType must be 'stream' or 'normal'"),
    ({"prompt": "hi", "answerType": ["stream"]}, "input.answerType must be 'stream' or 'normal'"),
    ({"prompt": "hi", "answerType": "x" * 100_000}, "input.answerType must be 'stream' or"),
    ({"prompt": "hi", "sampling_params": None}, "input.sampling_params must be an object"),
    ({"prompt": "hi", "sampling_params": []}, "input.sampling_params must be an object"),
    ({"prompt": "hi", "sampling_params": "temperature=0"}, "sampling_params must be an object"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": -1}}, "max_tokens must be at least 1"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": 0}}, "max_tokens must be at least 1"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": 10**30}}, "max_tokens must be at most"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": 2**63}}, "max_tokens must be at most"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": 1.5}}, "max_tokens must be an integer"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": "9"}}, "max_tokens must be an integer"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": []}}, "max_tokens must be an integer"),
    ({"prompt": "hi", "sampling_params": {"temperature": -0.1}}, "temperature must be non-negat"),
    ({"prompt": "hi", "sampling_params": {"temperature": 1e308}}, "temperature must be in [0, 2]"),
    ({"prompt": "hi", "sampling_params": {"temperature": "hot"}}, "temperature must be a number"),
    ({"prompt": "hi", "sampling_params": {"top_p": 1.01}}, "top_p must be in (0, 1]"),
    ({"prompt": "hi", "sampling_params": {"top_k": -2}}, "top_k must be 0 (disable), or at"),
    ({"prompt": "hi", "sampling_params": {"seed": 2**64}}, "seed is out of range"),
    ({"prompt": "hi", "sampling_params": {"stop": [""]}}, "stop cannot contain an empty string"),
    ({"prompt": "hi", "sampling_params": {"stop": ["a", 3]}}, "stop[1] must be a string"),
    ({"prompt": "hi", "sampling_params": {"stop": {"x": 1}}}, "stop must be a string or an array"),
    ({"prompt": "hi", "sampling_params": {"min_tokens": 600}}, "min_tokens must be less than or"),
    ({"prompt": "hi", "sampling_params": {"allowed_token_ids": [10**6]}}, "out-of-vocab"),
    ({"prompt": "hi", "sampling_params": {"n": 4}}, "input.sampling_params.n is not accepted"),
    ({"prompt": "hi", "sampling_params": {"logits_processors": ["os.system"]}},
     "unknown field input.sampling_params.logits_processors"),
    ({"prompt": "hi", "sampling_params": {"__class__": 1}}, "unknown field input.sampling_param"),
    ({"prompt": "hi", "sampling_params": DEEP}, "unknown field input.sampling_params.a"),
    ({"prompt": "hi", "extra": DEEP}, "unknown field input.extra"),
    ({"prompt": "hi", "Prompt": "hi"}, "unknown field input.Prompt"),
    ({"messages": None}, "input.messages must be a non-empty array"),
    ({"messages": []}, "input.messages must be a non-empty array"),
    ({"messages": [None]}, "input.messages[0] must be an object with exactly role and content"),
    ({"messages": [{"role": "user", "content": None}]}, "input.messages[0].content must be a"),
    ({"messages": [{"role": "root", "content": "hi"}]}, "input.messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": "hi", "name": "x"}]},
     "input.messages[0] must be an object with exactly role and content"),
    ({"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "\x00"}]},
     "input.messages[1].content must not contain NUL"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "exactly one of"),
]


def test_there_are_at_least_50_hostile_inputs():
    assert len(HOSTILE) >= 50


def test_hostile_inputs_fail_clearly_and_the_worker_keeps_serving(served):
    """On the host and in the image (``served``)."""
    serving = serving_processes(served)
    for job_input, expected in HOSTILE:
        bad = served.wait_status(served.run(job_input), timeout=120)
        assert bad["status"] == "FAILED", (job_input if len(str(job_input)) < 200 else "...", bad)
        assert expected in bad["error"], (expected, bad["error"])
        assert len(bad["error"]) < 300 and "Traceback" not in bad["error"]
        good = served.wait_status(served.run(GOOD), timeout=120)
        # One {"text": ...} (normal mode), with its usage. The tiny random model's 4 tokens
        # may decode to an empty string, so the text itself is not checked.
        assert good["status"] == "COMPLETED", good
        assert [set(c) for c in good["output"]] == [{"text", "usage", "finish_reason",
                                                     "stop_reason"}], good
    # The same worker process served everything: nothing crashed or restarted.
    assert serving_processes(served) == serving


def test_one_request_of_each_openai_feature_leaves_the_worker_serving(served):
    """Each feature the OpenAI route offers, once: none may end the worker (in the CPU
    image a logprobs request once killed vLLM's engine). On the host and in the image;
    tests/test_image.py sends the same requests to the embedded model."""
    serving = serving_processes(served)
    client = openai.OpenAI(base_url=f"{served.base}/{served.endpoint_id}/openai/v1",
                           api_key=served.api_key, max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    outcomes = openai_features.send_each(client, model)
    print(outcomes)
    openai_features.check_outcomes(outcomes)
    assert outcomes["tool, named"] == "ok"  # the live worker runs with a tool parser
    assert served.wait_status(served.run(GOOD), timeout=120)["status"] == "COMPLETED"
    assert serving_processes(served) == serving


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"{}", 400, '"input"'),
    (b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "JSON"),
    (b'{"input": {"prompt": "hi"}, "evil": 1}', 400, "unknown field 'evil'"),
    (json.dumps({"input": {"prompt": "x" * (11 * 2**20)}}).encode(), 413, "10 MB"),
])
def test_bodies_the_api_refuses_never_reach_the_worker(live, body, status, message):
    reply = requests.post(f"{live.url}/run", data=body, timeout=60,
                          headers={**live.headers, "Content-Type": "application/json"})
    assert reply.status_code == status
    assert message in reply.json()["error"]
    good = live.wait_status(live.run(GOOD), timeout=120)
    assert good["status"] == "COMPLETED"


# ---- load and faults: two worker processes ----------------------------------------


@pytest.fixture(scope="module")
def pair(tiny_model_dir, handler_path, tmp_path_factory):
    # The tiny model's whole context, so a job can stream for several seconds before it
    # is interrupted.
    with EndpointProcess(workers=2, concurrency=16, model=tiny_model_dir, handler=handler_path,
                         endpoint_id="pair", env={"MAX_MODEL_LEN": "2048"},
                         log_path=tmp_path_factory.mktemp("pair") / "endpoint.log") as endpoint:
        endpoint.wait_workers(2, timeout=600)
        yield endpoint


def holder(endpoint, job_id):
    """The worker (id, pid) that holds ``job_id``."""
    for worker in endpoint.workers():
        if job_id in worker["jobs"]:
            return worker
    raise AssertionError(f"no worker holds {job_id}")


def long_job(tokens=1800):
    return exact_tokens(tokens, "a long answer")


def test_several_workers_on_one_machine_get_vllms_own_core_binding(pair):
    # One engine alone binds every core (the handler's CPU default); two would fight.
    for pid in live_worker_pids(pair):
        assert psutil.Process(pid).environ().get("VLLM_CPU_OMP_THREADS_BIND") == "auto"


def live_worker_pids(endpoint):
    pids = [w["pid"] for w in endpoint.workers() if w["state"] != "exited"]
    assert len(pids) == 2, pids
    return pids


def test_1000_jobs_at_32_concurrent_lose_nothing(pair):
    report = load.run_load(pair, jobs=1000, concurrency=32, tokens=8)
    print(json.dumps({k: v for k, v in report.items() if k != "memory_samples"}, indent=2))
    assert report["problems"] == []  # memory levelling off included (load.check)
    assert report["statuses"] == {"COMPLETED": 900, "FAILED": 100}
    assert report["memory"]["levels_off"] is True, "too few memory samples to tell"


def test_a_job_cancelled_mid_stream_frees_its_engine_slot(pair):
    job_id, aborted = cancel_while_generating(pair, long_job())
    # The handler aborts the vLLM request: the worker's engine is left with nothing running.
    assert aborted.group(1) == "0", aborted.group(0)
    # And the slot serves the next job.
    assert all(job_id not in w["jobs"] for w in pair.workers())
    assert pair.wait_final(pair.run(GOOD))["status"] == "COMPLETED"


def wait_exited(endpoint, worker_id, timeout=60):
    """The endpoint's record of a worker, once it has seen the worker exit."""
    deadline = time.monotonic() + timeout
    while (worker := next(w for w in endpoint.workers()
                          if w["id"] == worker_id))["state"] != "exited":
        assert time.monotonic() < deadline, worker
        time.sleep(0.2)
    return worker


def holder_jobs(endpoint, worker_id):
    return next(w["jobs"] for w in endpoint.workers() if w["id"] == worker_id)


def test_sigterm_lets_running_jobs_end_cleanly(pair):
    pair.wait_workers(2)
    job_id = pair.run(long_job(300))
    pair.wait_status(job_id, ("IN_PROGRESS",))
    worker = holder(pair, job_id)
    os.kill(worker["pid"], signal.SIGTERM)
    state = pair.wait_final(job_id, timeout=120)
    assert state["status"] in ("COMPLETED", "FAILED"), state
    if state["status"] == "COMPLETED":
        assert "".join(c["text"] for c in state["output"])
    assert wait_exited(pair, worker["id"])["exitReason"] == "exited with code 0"


def test_sigterm_on_an_idle_worker_exits_in_seconds_without_a_traceback(pair):
    """As Runpod scales a worker down: SIGTERM, no job running. The kit's loop cuts its
    open queue polls short and stops vLLM's engine in order: about 4 s here, where the
    interpreter's own exit took 10-16 s and printed vLLM's AsyncLLM.__del__ error. The
    bound is `docker stop`'s default grace."""
    pair.wait_workers(2)
    pair.wait_idle()
    victim = next(w for w in pair.workers() if w["state"] == "ready")
    mark = len(pair.log_text())
    worker = psutil.Process(victim["pid"])
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    took = time.monotonic() - started
    print(f"an idle worker exited {took:.1f} s after SIGTERM")
    assert wait_exited(pair, victim["id"])["exitReason"] == "exited with code 0"
    tag = f"[{victim['id']}]"
    lines = [line for line in pair.log_text()[mark:].splitlines() if line.startswith(tag)]
    assert any("vLLM's engine shut down in" in line for line in lines), lines[-20:]
    assert not [line for line in lines if "Traceback" in line or "Exception ignored" in line]
    assert took < 10, lines[-20:]


def test_an_engine_that_dies_makes_its_worker_exit_non_zero_within_seconds(pair):
    pair.wait_workers(2)
    victim = next(w for w in pair.workers() if w["state"] != "exited")
    worker = psutil.Process(victim["pid"])
    cores = [p for p in worker.children(recursive=True) if "EngineCore" in p.name()]
    assert cores, [p.name() for p in worker.children(recursive=True)]
    killed_at = time.monotonic()
    cores[0].kill()
    worker.wait(30)  # gone (psutil cannot read the exit code of another's child)
    assert time.monotonic() - killed_at < 15
    # Its supervisor, the endpoint, saw it exit non-zero.
    assert wait_exited(pair, victim["id"])["exitReason"] == "exited with code 1"
    # The log says how: which engine process ended, and by which signal.
    assert re.search(r"vLLM engine died \(EngineCore\S* was killed by SIGKILL: out of memory\? "
                     r"The kernel's OOM killer sends SIGKILL\): exiting so the platform "
                     r"replaces this worker", pair.log_text()), pair.log_text()[-3000:]
    # The endpoint keeps serving with the other worker (and restarts this one).
    assert pair.wait_final(pair.run(GOOD))["status"] == "COMPLETED"


def test_a_worker_killed_mid_job_fails_that_job_and_the_rest_keep_serving(pair):
    pair.wait_workers(2)
    job_id = pair.run(long_job())
    pair.wait_status(job_id, ("IN_PROGRESS",))
    victim = holder(pair, job_id)
    os.kill(victim["pid"], signal.SIGKILL)
    state = pair.wait_final(job_id, timeout=60)
    assert state["status"] == "FAILED" and victim["id"] in state["error"], state
    # The other worker serves new jobs at once, before any restart is ready.
    jobs = [pair.run(GOOD) for _ in range(4)]
    assert [pair.wait_final(j)["status"] for j in jobs] == ["COMPLETED"] * 4
    health = pair.health()
    assert health["jobs"]["inProgress"] == 0 and health["jobs"]["inQueue"] == 0
