"""Fixtures for the local endpoint (run by llmkit.endpoint.harness): fake and real workers.

Loaded with ``pytest_plugins = ["endpoint_fixtures"]`` so that the session-scoped
live endpoint (one real vLLM worker on the tiny model) is shared by every module, and
so is its twin in the kit's CPU image (``live_container``). A test that takes ``served``
runs against both.
"""

from __future__ import annotations

import json
from pathlib import Path

import image_fixtures
import pytest
import requests

from llmkit.endpoint.harness import EndpointClient, EndpointProcess

pytest_plugins = ["image_fixtures"]  # base_image, for live_container

# A worker that needs no vLLM: the kit's worker loop (the SDK's production loop, with
# llmkit.runtime.worker_loop's timing; WORKER_LOOP=sdk for the SDK's own) around a toy async
# handler. With "stamp", its first and last chunks carry the handler's start and end
# times (time.time()).
FAKE_HANDLER = '''
import asyncio, json, os, time
from llmkit.runtime import lifecycle, worker_loop

worker_loop.quiet_sdk_logs()
import runpod

def fake_openai(inp):
    """The OpenAI route's contract, faked: one dict, or SSE strings ending in [DONE].
    Each answer echoes the job's input, so tests see what the endpoint queued."""
    route, body = inp["openai_route"], inp.get("openai_input") or {}
    if route == "/v1/models":
        return [{"object": "list", "echo": inp,
                 "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]}]
    if body.get("model") != "fake":
        return [{"error": {"message": f"The model `{body.get('model')}` does not exist.",
                           "type": "NotFoundError", "param": "model", "code": 404}}]
    if body.get("fake_raise"):
        raise RuntimeError(body["fake_raise"])
    chat = route == "/v1/chat/completions"
    kind = "chat.completion" if chat else "text_completion"
    words = [f"w{i} " for i in range(body.get("max_tokens", 3))]

    def choice(text, finish, stream):
        if not chat:
            return {"index": 0, "text": text, "finish_reason": finish}
        return {"index": 0, "finish_reason": finish,
                "delta" if stream else "message": {"role": "assistant", "content": text}}

    if not body.get("stream"):
        return [{"id": "fake-1", "object": kind, "created": 0, "model": "fake", "echo": inp,
                 "choices": [choice("".join(words), "length", False)]}]
    pieces = []
    for i, word in enumerate(words):
        if i == body.get("fake_fail_after"):
            return pieces + [{"error": {"message": "the engine broke", "type":
                                        "InternalServerError", "code": 500}}]
        chunk = {"id": "fake-1", "object": kind + (".chunk" if chat else ""), "created": 0,
                 "model": "fake", "choices": [choice(word, None, True)]}
        pieces.append(f"data: {json.dumps(chunk)}\\n\\n")
    return pieces + ["data: [DONE]\\n\\n"]


async def handler(job):
    inp = job["input"]
    started = time.time()
    if "openai_route" in inp:
        delay = (inp.get("openai_input") or {}).get("fake_delay", 0)
        for piece in fake_openai(inp):
            await asyncio.sleep(delay)
            yield piece
        return
    if inp.get("fail"):
        yield {"error": inp["fail"]}
        return
    if inp.get("exit"):
        os._exit(int(inp["exit"]))
    if inp.get("stamp"):
        yield {"started": started}
    for i in range(inp.get("chunks", 3)):
        await asyncio.sleep(inp.get("delay", 0.05))
        yield {"text": f"c{i} "}
    if inp.get("stamp"):
        yield {"ended": time.time()}

def start_worker():
    print("fake worker starting in", os.getcwd(), flush=True)
    worker_loop.install(runpod)
    runpod.serverless.start({
        "handler": handler,
        "concurrency_modifier": lambda c: int(os.environ.get("CONCURRENCY_MODIFIER", "1")),
        "return_aggregate_stream": True,
    })

if __name__ == "__main__":
    lifecycle.serve_or_die(start_worker)
'''


class FakeWorker:
    """Speaks the worker side of the protocol by hand, as the SDK does."""

    def __init__(self, endpoint: EndpointClient, worker_id: str = "hand-1") -> None:
        self.endpoint, self.id = endpoint, worker_id
        self.prefix = endpoint.url
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


def _stopped(job_id: str) -> str:
    # The worker's own log line: on a Runpod worker (RUNPOD_ENDPOINT_ID is set, as the local
    # endpoint sets it) the SDK's JSON, filed under the job's id (runtime/logs.py).
    return (rf'"requestId": "{job_id}", "message": "job {job_id} stopped: vLLM request '
            rf"{job_id}-\w+ (?:aborted \((\d+) request\(s\) still running\)|"
            rf"had already finished)")


def stop_line(endpoint: EndpointClient, job_id: str, timeout: float = 30):
    """The handler's log line once a stopped job's task has ended. Match group 1 is
    vLLM's running count after the abort; it is None when vLLM had already finished the
    request (the stop came while the job's last chunk was being posted)."""
    return endpoint.wait_for_log(_stopped(job_id), timeout=timeout)


def cancel_while_generating(endpoint: EndpointClient, job_input: dict, attempts: int = 5):
    """Submit ``job_input``, cancel it once its first chunk has streamed, and return
    (job id, the handler's abort log line: match group 1 is vLLM's running count).

    On a fast CPU the tiny model can finish a whole job before the stop reaches the
    worker: the endpoint then logs the worker's late result as ignored, or the handler
    logs that there was nothing to abort. Only that lost race is tried again (a fresh
    job); a stop that reached a generating job must show the abort, or this fails.
    """
    for _ in range(attempts):
        job_id = endpoint.run(job_input)
        while not (part := endpoint.json("GET", f"stream/{job_id}"))["stream"]:
            assert part["status"] in ("IN_QUEUE", "IN_PROGRESS"), part
        if part["status"] != "IN_PROGRESS":
            continue  # done before its first chunk was read
        reply = endpoint.json("POST", f"cancel/{job_id}")
        if reply["status"] == "COMPLETED":
            continue  # it ended between that read and the cancel
        assert reply == {"id": job_id, "status": "CANCELLED"}, reply
        found = endpoint.wait_for_log(
            rf"{_stopped(job_id)}|job {job_id}: late result from \S+ ignored", timeout=60)
        if found.group(1) is not None:
            return job_id, found
    raise AssertionError(f"every one of {attempts} jobs ended before its stop reached the "
                         f"worker: make the job longer")


@pytest.fixture(scope="session")
def fake_handler(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake-handler") / "handler.py"
    path.write_text(FAKE_HANDLER)
    return path


# The live worker's settings (vLLM serving arguments, by their variables): the OpenAI
# route serves tool calls; a job can be long enough to outlast an execution timeout.
LIVE_SETTINGS = {"MAX_MODEL_LEN": "8192", "ENABLE_AUTO_TOOL_CHOICE": "true",
                 "TOOL_CALL_PARSER": "hermes"}


@pytest.fixture(scope="session")
def live_endpoint(tmp_path_factory, tiny_model_dir, plain_handler):
    """One real worker (vLLM, tiny model, CONCURRENCY_MODIFIER=4, ``LIVE_SETTINGS``) serving
    the fixture handler, shared by all modules.

    Tests must leave it idle. A test that kills the worker uses ``live_to_kill``.
    """
    log = tmp_path_factory.mktemp("live-endpoint") / "endpoint.log"
    with EndpointProcess(workers=1, concurrency=4, model=tiny_model_dir, handler=plain_handler,
                         endpoint_id="live", api_key="live-key", log_path=log,
                         env=LIVE_SETTINGS) as endpoint:
        endpoint.wait_workers(timeout=600)  # minutes when the CPU is shared
        yield endpoint


@pytest.fixture
def live(live_endpoint) -> EndpointProcess:
    """The live endpoint, with a ready worker and nothing running (waits if needed)."""
    live_endpoint.wait_workers(timeout=400)
    live_endpoint.wait_idle()
    return live_endpoint


@pytest.fixture(scope="session")
def live_container(tmp_path_factory, base_image, tiny_model_dir, plain_handler):
    """The live endpoint's twin: the same model (mounted), handler (mounted over the image's
    /app/handler.py, as an iteration image would put it) and settings, served by a
    serverless container of the kit's CPU image instead of a worker on the host."""
    mounts, model = image_fixtures.mount_model(tiny_model_dir)
    mounts += ["-v", f"{plain_handler}:/app/handler.py:ro"]
    settings = {**LIVE_SETTINGS, **model, "CONCURRENCY_MODIFIER": "4"}
    with image_fixtures.container_endpoint(tmp_path_factory, base_image, "live-container",
                                           settings, mounts, endpoint_id="live",
                                           api_key="live-key") as endpoint:
        yield endpoint


@pytest.fixture(params=["host", pytest.param("container", marks=image_fixtures.NEEDS_IMAGE)])
def served(request) -> EndpointProcess:
    """The live endpoint, idle, worked on the host (``live``) or in the image
    (``live_container``): a test that takes it runs against both."""
    if request.param == "host":
        return request.getfixturevalue("live")
    endpoint = request.getfixturevalue("live_container")
    endpoint.wait_idle()
    return endpoint


def serving_processes(endpoint: EndpointProcess) -> list:
    """What stays the same while an endpoint's workers keep serving: their process ids
    on the host; in the image, the container's start (the worker is its process 1)."""
    container = getattr(endpoint, "container", None)
    if container is not None:
        state = container.state()
        return [container.id, state["StartedAt"]] if state["Running"] else []
    return [w["pid"] for w in endpoint.workers() if w["state"] != "exited"]


@pytest.fixture
def live_to_kill(live) -> EndpointProcess:
    """The live endpoint, for a test that kills its worker: such tests run last."""
    return live


def pytest_collection_modifyitems(config, items):
    """Run the tests that kill the shared worker after all others, whatever order the
    files were named in: its replacement needs another engine start."""
    last = [item for item in items if "live_to_kill" in getattr(item, "fixturenames", ())]
    items[:] = [item for item in items if item not in last] + last
