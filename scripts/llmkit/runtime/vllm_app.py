"""`vllm serve`'s own app, in process: every route it serves for the loaded model, on the
worker's running engine, called without a socket.

vLLM builds its OpenAI-compatible server as a FastAPI app (`build_app`) whose state holds
its serving objects (`init_app_state`). The kit builds the same app on its own engine and
calls it as an ASGI application: its routers, request models, exception handlers and SSE
answer, so every route `vllm serve` offers for the model (chat, completions, Responses,
Messages, embeddings, pooling, tokenize, ...) works, with no list here to keep. The queue
worker's OpenAI route (openai_route.py) and the load-balancing server (http_server.py)
both go through `request()`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

from llmkit.runtime import vllm_engine
from llmkit.runtime.vllm_api import build_app, init_app_state

_app = None  # (the engine it runs on, the app)
HANG_UP_GRACE_S = 2.0  # for vLLM's app to stop a request whose client is gone


async def app():
    """vLLM's app on the running engine, built on first use (once per engine)."""
    global _app
    engine = vllm_engine.engine()
    if _app is None or _app[0] is not engine:
        args = vllm_engine.settings().serve_args
        tasks = await engine.get_supported_tasks()
        built = build_app(args, tasks, engine.model_config)
        await init_app_state(engine, built.state, args, tasks)
        if _app is None or _app[0] is not engine:  # two first requests: the first one's wins
            _app = (engine, built)
    return _app[1]


async def state():
    """The app's state: vLLM's serving objects (openai_serving_models, ...)."""
    return (await app()).state


@dataclasses.dataclass
class Reply:
    status: int
    content_type: str
    body: AsyncIterator[bytes]  # the body's pieces as vLLM sends them; close() to hang up
    failed: asyncio.Future  # the app's own exception once it ends, else None
    hang_up: Callable[[], None]  # tell the app the client is gone (nothing once answered)

    @property
    def streaming(self):
        return self.content_type.startswith("text/event-stream")

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.body])


async def request(method, path, body: bytes = b"", query="") -> Reply:
    """Call vLLM's app as its HTTP server would, and return as soon as its answer starts.

    Closing the reply's body (or cancelling the task reading it) tells the app the client
    hung up, as uvicorn would: vLLM aborts the request."""
    application = await app()
    sent = asyncio.Queue()
    hung_up = asyncio.Event()
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if pending:
            return pending.pop()
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        await sent.put(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": method.upper(), "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }
    task = asyncio.ensure_future(application(scope, receive, send))
    loop = asyncio.get_running_loop()
    failed = loop.create_future()

    def ended(done):
        error = None if done.cancelled() else done.exception()
        if not failed.done():
            failed.set_result(error)
        sent.put_nowait(None)

    task.add_done_callback(ended)

    def hang_up():
        # As uvicorn would: the app's receive() says the client is gone, and vLLM's own
        # handlers (with_cancellation, StreamingResponse) stop the request, which aborts it
        # in the engine. Cancelling the app's task instead would leave their inner tasks
        # running; it is only the fallback, for an app that does not listen.
        if not task.done():
            hung_up.set()
            loop.call_later(HANG_UP_GRACE_S, lambda: task.done() or task.cancel())

    try:  # a whole answer starts only when vLLM has made all of it
        start = await sent.get()
    except BaseException:  # cancelled meanwhile (a cancelled job, a client gone): hang up
        hang_up()
        raise
    if start is None:  # the app raised before answering (no handler caught it)
        raise await failed
    content_type = next((v.decode() for k, v in start.get("headers", ())
                         if k.lower() == b"content-type"), "")

    async def pieces():
        try:
            while True:
                message = await sent.get()
                if message is None:
                    return
                if message["type"] == "http.response.body":
                    if message.get("body"):
                        yield message["body"]
                    if not message.get("more_body"):
                        return
        finally:
            hang_up()  # the reader stopped early: the client hung up

    return Reply(start["status"], content_type, pieces(), failed, hang_up)
