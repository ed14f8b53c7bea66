"""The local endpoint's OpenAI route, with a fake worker (the runpod SDK's real loop
around a toy handler that keeps the route's contract): the jobs it queues, the replies,
streaming as chunks arrive, errors as the `openai` client's own exceptions, and
cancellation when the client goes away. Fast: no vLLM. The real engine behind the
route is tested in test_openai_route.py."""

from __future__ import annotations

import json
import re
import threading
import time

import openai
import pytest
import requests

from llmkit.endpoint.harness import EndpointProcess

pytest_plugins = ["endpoint_fixtures"]
EXECUTION_TIMEOUT_S = 6


@pytest.fixture(scope="module")
def fake_ep(tmp_path_factory, fake_handler, tiny_model_dir):
    endpoint = EndpointProcess(workers=1, concurrency=4, handler=fake_handler,
                               model=tiny_model_dir, endpoint_id="oa",
                               args=["--execution-timeout", str(EXECUTION_TIMEOUT_S)],
                               log_path=tmp_path_factory.mktemp("openai-fake") / "endpoint.log")
    try:
        endpoint.start().wait_workers()
        yield endpoint
    finally:
        assert endpoint.stop() == 0


@pytest.fixture
def ep(fake_ep) -> EndpointProcess:
    fake_ep.wait_idle()
    return fake_ep


def client(ep: EndpointProcess, **kwargs) -> openai.OpenAI:
    # The base URL is all a user changes; no retries, so each call is one job.
    kwargs.setdefault("api_key", ep.api_key)
    return openai.OpenAI(base_url=f"{ep.url}/openai/v1", max_retries=0, **kwargs)


def test_requests_become_jobs_with_the_platforms_input(ep):
    oa = client(ep)
    chat = oa.chat.completions.create(model="fake", max_tokens=4,
                                      messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "w0 w1 w2 w3 "
    assert chat.model_extra["echo"] == {"openai_route": "/v1/chat/completions", "openai_input": {
        "model": "fake", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}}
    text = oa.completions.create(model="fake", prompt="once", max_tokens=2)
    assert text.choices[0].text == "w0 w1 "
    assert text.model_extra["echo"]["openai_route"] == "/v1/completions"
    models = oa.models.list()
    assert [m.id for m in models.data] == ["fake"]
    assert models.model_extra["echo"] == {"openai_route": "/v1/models"}  # a GET has no body
    assert ep.health()["jobs"]["completed"] >= 3
    assert f'openai client: OpenAI(base_url="{ep.url}/openai/v1"' in ep.log_text()


def test_stream_is_relayed_while_the_job_runs(ep):
    oa = client(ep)
    stream = oa.chat.completions.create(model="fake", max_tokens=6, stream=True,
                                        messages=[{"role": "user", "content": "hi"}],
                                        extra_body={"fake_delay": 0.4})
    deltas, running_at_first = [], None
    for chunk in stream:
        if running_at_first is None:
            running_at_first = ep.health()["jobs"]["inProgress"]
        deltas.append(chunk.choices[0].delta.content)
    assert deltas == [f"w{i} " for i in range(6)]
    assert running_at_first == 1, "the first delta came only after the job ended"

    reply = requests.post(f"{ep.url}/openai/v1/completions", headers=ep.headers, timeout=30,
                          json={"model": "fake", "prompt": "x", "max_tokens": 2, "stream": True})
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert reply.text.endswith("data: [DONE]\n\n") and reply.text.count("data: ") == 3


def _error_body(reply: requests.Response) -> dict:
    body = reply.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    return body["error"]


def test_auth_route_and_body_errors_have_openais_shape(ep):
    with pytest.raises(openai.AuthenticationError):
        client(ep, api_key="wrong").models.list()
    reply = requests.get(f"{ep.url}/openai/v1/models", timeout=10)
    assert reply.status_code == 401 and _error_body(reply)["code"] == 401
    other = openai.OpenAI(base_url=f"{ep.base}/elsewhere/openai/v1", api_key=ep.api_key,
                          max_retries=0)
    with pytest.raises(openai.NotFoundError, match="elsewhere"):
        other.models.list()
    with pytest.raises(openai.NotFoundError, match="POST /chat/completions"):
        client(ep).embeddings.create(model="fake", input="x")
    reply = ep.call("GET", "openai/v1/chat/completions")
    assert reply.status_code == 405 and _error_body(reply)["type"]
    for body in ("[1, 2]", "not json", ""):
        reply = ep.call("POST", "openai/v1/chat/completions", data=body)
        assert reply.status_code == 400, (body, reply.text)
        assert _error_body(reply)["code"] == 400
    assert ep.health()["jobs"]["inQueue"] == 0  # none of these queued a job
    # The platform's own routes keep their error shape.
    assert ep.call("GET", "status/nope").json() == {
        "error": "job 'nope' not found: unknown id, or its result expired"}


def test_a_failed_job_is_an_openai_error_with_its_status(ep):
    oa = client(ep)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist") as err:
        oa.chat.completions.create(model="nope", messages=messages)
    assert err.value.body == {"message": "The model `nope` does not exist.",
                              "type": "NotFoundError", "param": "model", "code": 404}
    # Streaming too: the error comes before any event, so it is a status, not a 200.
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="nope", messages=messages, stream=True)
    # An exception in the handler: a 500 with its message, and no traceback.
    with pytest.raises(openai.InternalServerError) as err:
        oa.chat.completions.create(model="fake", messages=messages,
                                   extra_body={"fake_raise": "disk on fire"})
    message = err.value.body["message"]
    assert "disk on fire" in message and "Traceback" not in message and ".py" not in message


def test_messages_errors_have_anthropics_shape(ep):
    """/v1/messages answers in Anthropic's error shape, so its client raises its own types."""
    import anthropic

    claude = anthropic.Anthropic(base_url=f"{ep.url}/openai", auth_token=ep.api_key,
                                 api_key=None, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="nope", max_tokens=4,
                               messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "The model `nope` does not exist."}}
    reply = ep.call("POST", "openai/v1/messages", data="not json")
    assert reply.status_code == 400 and reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == "invalid_request_error"
    wrong = anthropic.Anthropic(base_url=f"{ep.url}/openai", auth_token="wrong", api_key=None,
                                max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        wrong.messages.create(model="fake", max_tokens=4,
                              messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["error"]["type"] == "authentication_error"


def test_a_failure_mid_stream_ends_the_stream_with_an_error_event(ep):
    stream = client(ep).chat.completions.create(
        model="fake", max_tokens=5, stream=True, messages=[{"role": "user", "content": "hi"}],
        extra_body={"fake_fail_after": 2})
    deltas = []
    with pytest.raises(openai.APIError, match="the engine broke"):
        for chunk in stream:
            deltas.append(chunk.choices[0].delta.content)
    assert deltas == ["w0 ", "w1 "]


def test_timed_out_and_cancelled_jobs(ep):
    oa = client(ep)
    messages = [{"role": "user", "content": "hi"}]
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:  # 504, and not retried
        oa.chat.completions.create(model="fake", messages=messages,
                                   extra_body={"fake_delay": EXECUTION_TIMEOUT_S + 4})
    assert err.value.status_code == 504 and "execution timeout" in err.value.message
    assert time.monotonic() - t0 < EXECUTION_TIMEOUT_S + 5

    mark = len(ep.log_text())
    caught = []

    def call():
        try:
            oa.chat.completions.create(model="fake", messages=messages,
                                       extra_body={"fake_delay": 5})
        except openai.APIStatusError as e:
            caught.append(e)

    thread = threading.Thread(target=call)
    thread.start()
    job_id = _new_log_line(ep, mark, r"job (\S+) queued \(/openai/v1/chat/completions\)")
    ep.cancel(job_id)
    thread.join(30)
    assert caught and caught[0].status_code == 499
    assert caught[0].response.headers["x-should-retry"] == "false"


def _new_log_line(ep: EndpointProcess, mark: int, pattern: str) -> str:
    """The first group of ``pattern`` in the log written after ``mark``."""
    deadline = time.monotonic() + 30
    while not (match := re.search(pattern, ep.log_text()[mark:])):
        assert time.monotonic() < deadline, ep.log_tail()
        time.sleep(0.1)
    return match.group(1)


def test_a_client_that_hangs_up_cancels_its_job(ep):
    body = {"model": "fake", "max_tokens": 40, "stream": True, "fake_delay": 0.2,
            "messages": [{"role": "user", "content": "hi"}]}
    before = ep.health()["jobs"]
    gone = r"job (\S+) cancelled: its OpenAI client went away"
    mark = len(ep.log_text())
    with requests.post(f"{ep.url}/openai/v1/chat/completions", headers=ep.headers, json=body,
                       stream=True, timeout=30) as reply:
        first = next(reply.iter_lines())
        assert json.loads(first.removeprefix(b"data: "))["choices"][0]["delta"]
    job_id = _new_log_line(ep, mark, gone)
    assert ep.status(job_id)["status"] == "CANCELLED"
    _new_log_line(ep, mark, rf"telling \S+ to (stop) {job_id}")  # the worker is told
    ep.wait_idle()
    assert ep.health()["jobs"]["completed"] == before["completed"]

    # Not streaming: a client that gives up waiting.
    mark = len(ep.log_text())
    with pytest.raises(openai.APITimeoutError):
        client(ep, timeout=1).chat.completions.create(
            model="fake", messages=body["messages"], extra_body={"fake_delay": 5})
    assert ep.status(_new_log_line(ep, mark, gone))["status"] == "CANCELLED"
    ep.wait_idle()
