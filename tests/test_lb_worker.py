"""The load-balancing worker (MODE_TO_RUN=lb, llmkit/runtime/http_server.py), on the host
and in the kit's CPU image: the same tests against both.

One worker per place (vLLM on the tiny model, the fixture handler, CONCURRENCY_MODIFIER=64,
/ping on its own port), driven over real HTTP by the openai and anthropic clients and
plain requests. The drain test stops it, so it runs last.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import image_fixtures
import image_harness as h
import pytest
import requests

from llmkit.paths import REPO_ROOT

pytest_plugins = ["image_fixtures"]
pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

LIMIT = 64
LONG = {"max_tokens": 4000, "ignore_eos": True, "temperature": 0}  # far longer than a test


class Worker:
    """A load-balancing worker, started in a process or a container; ``pings`` holds
    (seconds since start, /ping status) each time the status changed."""

    def __init__(self, where, start, stop, exited, logs, extra_env=None):
        self.where, self._stop, self.exited, self.logs = where, stop, exited, logs
        self.extra_env = extra_env or {}
        self.port, self.health_port = h.free_port(), h.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        start(self)
        self.pings = self._watch_ping()

    def _watch_ping(self, timeout=900):
        pings, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.exited() is None, f"the worker exited\n{self.logs()[-5000:]}"
            try:
                status = requests.get(f"http://127.0.0.1:{self.health_port}/ping",
                                      timeout=2).status_code
            except requests.ConnectionError:
                status = None  # not listening yet: the handler still imports vLLM
            if not pings or pings[-1][1] != status:
                pings.append((round(time.monotonic() - self.started, 1), status))
            if status == 200:
                return pings
            time.sleep(0.1)
        raise AssertionError(f"/ping never answered 200: {pings}\n{self.logs()[-5000:]}")

    def env(self, model, handler):
        return {"MODE_TO_RUN": "lb", "PORT": str(self.port), "PORT_HEALTH": str(self.health_port),
                "CONCURRENCY_MODIFIER": str(LIMIT), "MODEL": model, "MAX_MODEL_LEN": "8192",
                "HANDLER_PATH": handler, **self.extra_env}

    def stats(self):
        return requests.get(f"{self.url}/stats", timeout=10).json()

    def wait_stats(self, done, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not done(stats := self.stats()):
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
        return stats

    def wait_idle(self):
        return self.wait_stats(lambda s: s["in_flight"] == 0 and s["vllm_requests"] == 0)

    def terminate(self):
        self._stop()


def _host(tmp_path_factory, tiny_model_dir, plain_handler, extra_env=None):
    log = tmp_path_factory.mktemp("lb-host") / "worker.log"
    procs = []

    def start(worker):
        env = {**os.environ, **worker.env(str(tiny_model_dir), str(plain_handler)),
               "PYTHONPATH": str(REPO_ROOT / "scripts")}
        with open(log, "wb") as out:
            # A session of its own: _remove kills the group, the engine's processes too.
            procs.append(subprocess.Popen([sys.executable, "-u", str(plain_handler)], env=env,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          cwd=log.parent, start_new_session=True))

    worker = Worker("host", start, lambda: procs[0].send_signal(signal.SIGTERM),
                    lambda: procs[0].poll(), lambda: log.read_text(errors="replace"), extra_env)
    worker.process = procs[0]
    return worker


def _container(tmp_path_factory, base_image, tiny_model_dir, plain_handler, extra_env=None):
    mounts, model = image_fixtures.mount_model(tiny_model_dir)
    boxes = []

    def start(worker):
        env = {**worker.env(model["MODEL"], "/app/handler.py"), "MODEL_ID": model["MODEL_ID"]}
        boxes.append(h.Container(base_image, "--network", "host", image_fixtures.SHM, *mounts,
                                 "-v", f"{plain_handler}:/app/handler.py:ro", env=env))

    def exited():
        state = boxes[0].state()
        return None if state["Running"] else state["ExitCode"]

    worker = Worker("container", start,
                    lambda: h.docker("kill", "--signal", "TERM", boxes[0].name),
                    exited, lambda: boxes[0].logs(), extra_env)
    worker.container = boxes[0]
    return worker


PLACES = ["host", pytest.param("container", marks=image_fixtures.NEEDS_IMAGE)]


def _worker(request, tmp_path_factory, tiny_model_dir, plain_handler, extra_env=None):
    if request.param == "host":
        return _host(tmp_path_factory, tiny_model_dir, plain_handler, extra_env)
    return _container(tmp_path_factory, request.getfixturevalue("base_image"), tiny_model_dir,
                      plain_handler, extra_env)


def _remove(worker):
    if worker.where == "host":
        # SIGTERM, as the platform stops a worker, then SIGKILL to whatever is left: killing
        # the worker alone would leave vLLM's engine processes running, re-parented to init.
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
            try:
                worker.process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.process.wait(30)
    else:
        worker.container.remove()


@pytest.fixture(scope="module", params=PLACES)
def lb(request, tmp_path_factory, tiny_model_dir, plain_handler):
    worker = _worker(request, tmp_path_factory, tiny_model_dir, plain_handler)
    try:
        yield worker
    finally:
        _remove(worker)


def test_ping_answers_204_while_vllm_starts_then_200(lb):
    statuses = [status for _, status in lb.pings]
    print(f"{lb.where}: /ping over time (s, status): {lb.pings}")
    image_fixtures.record(**{f"lb_ping_{lb.where}": lb.pings})
    # Not listening while the handler imports vLLM, then 204 while the engine loads, then 200.
    assert statuses in ([None, 204, 200], [204, 200]), lb.pings
    assert "Traceback" not in lb.logs()


def test_the_openai_client_straight_at_the_worker(lb):
    import openai

    client = openai.OpenAI(base_url=f"{lb.url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert chat.choices[0].message.content and chat.usage.completion_tokens <= 8
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 8
    text = client.completions.create(model=model, prompt="Once", max_tokens=5)
    assert text.choices[0].text
    response = client.responses.create(model=model, input="Hi", max_output_tokens=16)
    assert response.status in ("completed", "incomplete") and response.output
    events = [e.type for e in client.responses.create(model=model, input="Hi",
                                                      max_output_tokens=16, stream=True)]
    assert events[0] == "response.created" and events[-1] in ("response.completed",
                                                              "response.incomplete")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=[{"role": "nobody", "content": 1}])


def test_the_anthropic_client_straight_at_the_worker(lb):
    import anthropic

    client = anthropic.Anthropic(base_url=lb.url, api_key="unused", max_retries=0)
    model = requests.get(f"{lb.url}/v1/models", timeout=10).json()["data"][0]["id"]
    message = client.messages.create(model=model, max_tokens=8, extra_body={"temperature": 0},
                                     messages=[{"role": "user", "content": "Hi"}])
    assert message.content[0].text and message.usage.output_tokens <= 8
    with client.messages.stream(model=model, max_tokens=8, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": "Hi"}]) as stream:
        assert "".join(stream.text_stream)
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="nope", max_tokens=8,
                               messages=[{"role": "user", "content": "Hi"}])
    assert err.value.body["type"] == "error"


def test_every_route_vllm_serve_serves_tokenize_and_detokenize(lb):
    """vLLM's own app answers, so its routes outside /v1 are there too."""
    model = requests.get(f"{lb.url}/v1/models", timeout=10).json()["data"][0]["id"]
    tokens = requests.post(f"{lb.url}/tokenize", timeout=30,
                           json={"model": model, "prompt": "Hello there"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0, tokens
    text = requests.post(f"{lb.url}/detokenize", timeout=30,
                         json={"model": model, "tokens": tokens["tokens"]}).json()
    assert text["prompt"].strip().endswith("Hello there"), text
    assert requests.get(f"{lb.url}/version", timeout=10).json()["version"]
    missing = requests.post(f"{lb.url}/v1/embeddings", timeout=10,
                            json={"model": model, "input": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404


def native(lb, job_input, accept=None, **kwargs):
    headers = {"Accept": accept} if accept else {}
    return requests.post(f"{lb.url}/runsync", json={"input": job_input}, headers=headers,
                         timeout=kwargs.pop("timeout", 120), **kwargs)


def test_the_native_route_answers_json_sse_and_ndjson(lb):
    ask = {"prompt": "Hello", "sampling_params": {"max_tokens": 12, "ignore_eos": True}}
    whole = native(lb, ask)
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["status"] == "COMPLETED" and body["output"][0]["text"], body
    # The answer's usage and finish reason, as on the queue.
    assert body["output"][-1]["usage"]["completion_tokens"] == 12, body
    assert body["output"][-1]["finish_reason"] == "length", body
    sse = native(lb, {**ask, "answerType": "stream"}, "text/event-stream")
    assert sse.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    # The last event may have no text of its own: it carries the usage.
    assert len(events) >= 1 and all(e["text"] for e in events[:-1]), sse.text
    assert events[-1]["usage"]["completion_tokens"] == 12, sse.text
    nd = native(lb, {**ask, "answerType": "stream"}, "application/x-ndjson")
    lines = [json.loads(line) for line in nd.text.splitlines()]
    assert nd.headers["Content-Type"].startswith("application/x-ndjson") and lines[0]["text"]


@pytest.mark.parametrize("job_input, field", [
    ({"promt": "Hi"}, "input.promt"),
    ({"prompt": 5}, "input.prompt"),
    ({"prompt": "Hi", "sampling_params": {"temperature": -1}}, "temperature"),
    ({"prompt": "Hi", "lora": "nope"}, "input.lora"),
])
def test_native_bad_input_fails_like_a_job_naming_the_field(lb, job_input, field):
    for accept in (None, "text/event-stream", "application/x-ndjson"):
        reply = native(lb, job_input, accept)
        assert reply.status_code == 400, reply.text
        assert reply.json()["status"] == "FAILED" and field in reply.json()["error"], reply.text
    bad = requests.post(f"{lb.url}/runsync", data=b"{nope", timeout=10)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    assert lb.stats()["state"] == "ready"


def test_a_body_over_runpods_30_mb_gets_413_in_each_apis_shape(lb):
    big = json.dumps({"input": {"prompt": "x" * (31 * 2**20)}})
    native_reply = requests.post(f"{lb.url}/runsync", data=big, timeout=60)
    assert native_reply.status_code == 413, native_reply.text[:500]
    assert "30 MB" in native_reply.json()["error"]
    chat = requests.post(f"{lb.url}/v1/chat/completions", data=big, timeout=60)
    assert chat.status_code == 413 and "30 MB" in chat.json()["error"]["message"], chat.text
    messages = requests.post(f"{lb.url}/v1/messages", data=big, timeout=60)
    assert messages.status_code == 413 and messages.json()["type"] == "error", messages.text
    ok = native(lb, {"prompt": "Hi", "sampling_params": {"max_tokens": 2}})
    assert ok.status_code == 200 and lb.stats()["state"] == "ready", ok.text


def test_64_concurrent_streams_none_lost(lb):
    """32 native SSE streams and 32 OpenAI chat streams at once, each exactly 24 tokens."""
    import openai

    client = openai.OpenAI(base_url=f"{lb.url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id

    def one_native(i):
        reply = native(lb, {"prompt": f"Story {i}:", "answerType": "stream",
                            "sampling_params": {"max_tokens": 24, "ignore_eos": True}},
                       "text/event-stream", timeout=600)
        assert reply.status_code == 200 and "event: error" not in reply.text, reply.text
        return "".join(json.loads(line[6:])["text"] for line in reply.text.splitlines()
                       if line.startswith("data: "))

    def one_openai(i):
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Story {i}"}], max_tokens=24,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        assert chunks[-1].usage.completion_tokens == 24
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with concurrent.futures.ThreadPoolExecutor(LIMIT) as pool:
        futures = [pool.submit(one_native if i % 2 else one_openai, i) for i in range(LIMIT)]
        texts = [f.result(timeout=900) for f in futures]
    assert len(texts) == LIMIT and all(texts)
    lb.wait_idle()


def _hold_slots(lb, count):
    """``count`` long streaming requests, each read to its first chunk and left open."""
    def one(i):
        reply = native(lb, {"prompt": f"Hold {i}", "answerType": "stream",
                            "sampling_params": LONG}, "application/x-ndjson", stream=True,
                       timeout=600)
        assert reply.status_code == 200, reply.text
        lines = reply.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)
        return reply, lines

    with concurrent.futures.ThreadPoolExecutor(min(count, 32)) as pool:
        return list(pool.map(one, range(count)))


def test_a_full_worker_answers_429_at_once_and_hung_up_clients_abort_vllm(lb):
    import anthropic
    import openai

    held = _hold_slots(lb, LIMIT)
    try:
        stats = lb.stats()
        assert stats["in_flight"] == LIMIT and stats["vllm_requests"] == LIMIT, stats
        start = time.monotonic()
        reply = native(lb, {"prompt": "one more"})
        took = time.monotonic() - start
        assert reply.status_code == 429 and int(reply.headers["Retry-After"]) >= 1, reply.text
        assert "CONCURRENCY_MODIFIER" in reply.json()["error"]
        print(f"{lb.where}: 429 with {LIMIT} requests running, in {took * 1000:.0f} ms")
        assert took < 5, took  # a refusal, not a wait for a slot
        client = openai.OpenAI(base_url=f"{lb.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="any", prompt="x", max_tokens=1)
        with pytest.raises(anthropic.RateLimitError):
            anthropic.Anthropic(base_url=lb.url, api_key="unused", max_retries=0).messages.create(
                model="any", max_tokens=1, messages=[{"role": "user", "content": "x"}])
        assert requests.get(f"{lb.url}/v1/models", timeout=10).status_code == 200
    finally:
        for reply, _ in held:
            reply.close()  # hang up
    start = time.monotonic()
    lb.wait_idle()  # every vLLM request aborted: each would have run 4000 tokens
    print(f"{lb.where}: {LIMIT} hung-up streams aborted in vLLM within "
          f"{time.monotonic() - start:.1f} s")


def test_a_client_that_hangs_up_aborts_its_request(lb):
    """A whole (non-streamed) answer: the client times out and closes the connection."""
    with pytest.raises(requests.ReadTimeout):
        native(lb, {"prompt": "long", "sampling_params": LONG}, timeout=(10, 1.5))
    lb.wait_idle()
    import openai

    client = openai.OpenAI(base_url=f"{lb.url}/v1", api_key="unused", max_retries=0,
                           timeout=1.5)
    model = client.models.list().data[0].id
    with pytest.raises(openai.APITimeoutError):
        client.completions.create(model=model, prompt="x", max_tokens=4000,
                                  extra_body={"ignore_eos": True})
    lb.wait_idle()


def test_sigterm_drains_the_requests_in_flight_then_exits_zero(lb, request):
    """Runs last in this module: it stops the worker."""
    # An open defect, seen in 2 of 4 full runs in the image (2026-12-07) and in 1 of 6 on
    # the host (clean-clone CI of 0ae966f, beside the image builds): after SIGTERM the LB
    # worker logs "draining 4 request(s)", then, in the same second and before the drain
    # ends, vLLM's MPClient in the worker's own process begins its shutdown ("[shutdown]
    # MPClient: start", then SIGTERM to EngineCore), the watchdog logs "vLLM engine died"
    # and the worker exits 1 with the requests aborted. Not reproduced alone. It runs in
    # every `make test`, and reports XPASS when it drains.
    request.node.add_marker(pytest.mark.xfail(
        strict=False, reason="SIGTERM during a drain can stop vLLM's engine early (open defect)"))
    def one(i):
        reply = native(lb, {"prompt": f"Drain {i}", "answerType": "stream",
                            "sampling_params": {"max_tokens": 1500, "ignore_eos": True}},
                       "application/x-ndjson", timeout=600)
        return reply.status_code, [json.loads(line) for line in reply.text.splitlines()]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(4)]
        lb.wait_stats(lambda s: s["in_flight"] == 4, timeout=120)  # seconds of work each
        lb.terminate()
        deadline = time.monotonic() + 10
        while requests.get(f"http://127.0.0.1:{lb.health_port}/ping", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "/ping still healthy after SIGTERM"
            time.sleep(0.1)
        late = native(lb, {"prompt": "late"})
        assert late.status_code == 503 and late.headers.get("Retry-After"), late.text
        results = [f.result(timeout=600) for f in futures]
    for status, lines in results:
        assert status == 200 and lines and not any("error" in line for line in lines), lines
    deadline = time.monotonic() + 120
    while (code := lb.exited()) is None:
        assert time.monotonic() < deadline, lb.logs()[-3000:]
        time.sleep(0.5)
    logs = lb.logs()
    assert code == 0, logs[-3000:]
    assert "draining 4 request(s)" in logs and "vLLM's engine shut down" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-5000:]



# vLLM's own runner settings turn the tiny generative model into an embedding model.
POOLING = {"RUNNER": "pooling", "CONVERT": "embed", "MAX_MODEL_LEN": "256"}


@pytest.fixture(scope="module", params=PLACES)
def pooling_lb(request, tmp_path_factory, tiny_model_dir, plain_handler):
    worker = _worker(request, tmp_path_factory, tiny_model_dir, plain_handler, POOLING)
    try:
        yield worker
    finally:
        _remove(worker)


def test_a_pooling_model_serves_embeddings_to_the_openai_client(pooling_lb):
    import openai

    client = openai.OpenAI(base_url=f"{pooling_lb.url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    reply = client.embeddings.create(model=model, input=["Hello there", "Goodbye"])
    vectors = [item.embedding for item in reply.data]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) == 128, reply
    assert vectors[0] != vectors[1] and reply.usage.prompt_tokens > 0
    pooled = requests.post(f"{pooling_lb.url}/pooling", timeout=30,
                           json={"model": model, "input": "Hello there"})
    assert pooled.status_code == 200 and pooled.json()["data"], pooled.text
    with pytest.raises(openai.NotFoundError):  # no text generation on a pooling model
        client.completions.create(model=model, prompt="Hi", max_tokens=4)
