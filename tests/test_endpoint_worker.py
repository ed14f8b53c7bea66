"""The exported handler.py as a real worker (vLLM CPU engine, tiny model) behind the
local endpoint: streaming, concurrency, failures, cancellation, timeouts, a kill.

All tests share one worker (CONCURRENCY_MODIFIER=4); the kill runs after every other test
(see ``live_to_kill``)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import psutil
import pytest
from endpoint_fixtures import cancel_while_generating, stop_line

from llmkit.endpoint.jobs import FINAL
from llmkit.job_inputs import exact_tokens
from llmkit.processes import alive

pytest_plugins = ["endpoint_fixtures"]
pytestmark = pytest.mark.engine

# One sequence runs at 120 to over 400 tokens/s on 2 cores, by machine; at 2000 tokens
# a fast one finished within the 5 s execution timeout. This many outlast it several
# times over (the live endpoint's MAX_MODEL_LEN is 8192).
LONG = 8000


def _abort_line(live, job_id: str, timeout: float = 30) -> re.Match:
    """The handler's log line, printed after vLLM's abort() returned."""
    found = stop_line(live, job_id, timeout)
    assert found.group(1) is not None, f"job {job_id} had finished before its stop: {LONG=} " \
                                       f"is too short for this machine"
    return found


def test_stream_job_chunks_arrive_before_it_completes(live):
    job_id = live.run(exact_tokens(300))
    chunks, early = [], 0
    while True:
        part = live.json("GET", f"stream/{job_id}")
        chunks += [item["output"] for item in part["stream"]]
        if part["status"] in FINAL:
            break
        early = len(chunks)  # chunks read while the job was still IN_PROGRESS
    assert part["status"] == "COMPLETED"
    assert early >= 1, "no chunk reached the client before the job completed"
    state = live.status(job_id)
    # return_aggregate_stream: the output is the list of streamed chunks.
    assert state["output"] == chunks and all(set(c) == {"text"} for c in chunks[:-1])
    # The last chunk also says what vLLM reported: 300 tokens, cut at max_tokens.
    assert chunks[-1]["usage"]["completion_tokens"] == 300, chunks[-1]
    assert chunks[-1]["finish_reason"] == "length"
    assert isinstance(state["delayTime"], int) and state["executionTime"] > 0


def test_normal_job_through_runsync_and_run(live):
    state = live.runsync(exact_tokens(40, stream=False), wait_ms=120000)
    assert state["status"] == "COMPLETED", state
    assert len(state["output"]) == 1 and state["output"][0]["text"]
    assert state["id"].startswith("sync-") and state["executionTime"] > 0
    job_id = live.run({"messages": [{"role": "user", "content": "Hi"}],
                       "sampling_params": {"max_tokens": 20}})
    state = live.wait_status(job_id)
    assert state["status"] == "COMPLETED" and len(state["output"]) == 1


def test_bad_input_fails_with_the_handlers_message_then_a_good_job_succeeds(live):
    bad = live.wait_status(live.run({"prompt": "hi", "sampling_params": {"max_tokens": 0}}))
    assert bad["status"] == "FAILED"
    assert bad["error"] == "input.sampling_params.max_tokens must be at least 1, got 0"
    bad = live.wait_status(live.run({"prompt": "", "answerType": "stream"}))
    assert bad["status"] == "FAILED" and bad["error"] == "input.prompt must not be empty"
    good = live.wait_status(live.run(exact_tokens(10)))
    assert good["status"] == "COMPLETED" and good["output"]


def test_four_jobs_run_at_once_with_concurrency_modifier_4(live):
    ids = [live.run(exact_tokens(LONG, prompt=f"job {i}")) for i in range(4)]
    deadline = time.monotonic() + 60
    states = []
    while time.monotonic() < deadline:
        states = [live.status(job_id)["status"] for job_id in ids]
        if states == ["IN_PROGRESS"] * 4:
            break
        assert not set(states) & set(FINAL), states
        time.sleep(0.2)
    assert states == ["IN_PROGRESS"] * 4
    health = live.health()
    assert health["jobs"]["inProgress"] == 4 and health["workers"]["running"] == 1
    assert {live.status(job_id)["workerId"] for job_id in ids} == {"worker-1"}
    for job_id in ids:
        live.json("POST", f"cancel/{job_id}")
    for job_id in ids:
        _abort_line(live, job_id)


def test_cancel_aborts_the_generation_in_vllm(live):
    job_id, aborted = cancel_while_generating(live, exact_tokens(LONG))
    # The worker got the stop, the SDK cancelled the task, and the handler aborted the
    # request in vLLM: nothing is left generating (it had up to ~2000 tokens to go).
    assert aborted.group(1) == "0"
    assert live.status(job_id)["status"] == "CANCELLED"
    # The engine is free: a short job goes straight through.
    started = time.monotonic()
    assert live.wait_status(live.run(exact_tokens(20)))["status"] == "COMPLETED"
    assert time.monotonic() - started < 20


def test_execution_timeout_gives_timed_out_and_aborts(live):
    job_id = live.run(exact_tokens(LONG), policy={"executionTimeout": 5000})
    state = live.wait_status(job_id, timeout=60)
    assert state["status"] == "TIMED_OUT"
    assert state["error"] == "job ran past its execution timeout of 5 s"
    # Stopped at its timeout, not run to its end (its ~2000 tokens take minutes here); the
    # margin is for a loaded 2-core machine, where the endpoint's clock tick can run late.
    assert 5000 <= state["executionTime"] < 15000
    assert _abort_line(live, job_id).group(1) == "0"


def test_killed_worker_turns_its_job_into_failed(live_to_kill):
    """Runs last: the worker is replaced afterwards, which takes another engine start."""
    live = live_to_kill
    job_id = live.run(exact_tokens(LONG))
    live.wait_status(job_id, ("IN_PROGRESS",))
    worker = next(w for w in live.workers() if w["state"] == "ready")
    family = [worker["pid"]] + [p.pid for p in
                                psutil.Process(worker["pid"]).children(recursive=True)]
    assert len(family) >= 3  # the worker, the SDK's heartbeat, vLLM's engine core
    # Read the stream meanwhile, as a client would: it must end, not hang.
    ended = threading.Event()

    def follow():
        while live.json("GET", f"stream/{job_id}")["status"] not in FINAL:
            pass
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    os.kill(worker["pid"], signal.SIGKILL)
    state = live.wait_status(job_id, timeout=20)
    assert state["status"] == "FAILED"
    assert state["error"] == f"worker {worker['id']} was killed by SIGKILL while running this job"
    assert ended.wait(10)
    health = live.health()
    assert health["workers"]["unhealthy"] == 1 and health["jobs"]["inProgress"] == 0
    deadline = time.monotonic() + 15
    while alive(family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(family), "processes of the killed worker are still running"
    live.wait_for_log(rf"{worker['id']} was killed by SIGKILL; failed its job\(s\): {job_id}")
