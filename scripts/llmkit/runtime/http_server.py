"""The load-balancing worker (MODE_TO_RUN=lb): the handler and vLLM's OpenAI layer served
over HTTP by the worker itself, as Runpod's load-balancing endpoints call it. No queue.

    GET  /ping                  on PORT_HEALTH: 204 while vLLM starts, 200 when ready,
                                503 while draining after SIGTERM
    GET  /stats                 state, requests in flight, the limit, vLLM's requests
    POST /runsync               the native API, the user's handler: {"input": {...}}.
                                JSON like a queue endpoint's /runsync, or the chunks as they
                                come: Accept: text/event-stream (SSE) or application/x-ndjson
    anything else               `vllm serve`'s own app, in process (vllm_app.py): every
                                route it serves for the model, /v1/chat/completions,
                                /v1/responses, /v1/messages, /v1/models, /tokenize, ...

At most CONCURRENCY_MODIFIER requests run at once (vLLM batches them); one more gets 429
with Retry-After at once, never a wait: a load balancer has no queue, the client or the
platform retries. A client that hangs up cancels its request, which aborts vLLM's. After
SIGTERM new requests get 503, the ones in flight finish, then vLLM stops and the worker
exits 0. The same job_function and Served pair as the queue worker (jobs.py, reload.py):
the same handler, the same errors, the same reloads.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

from aiohttp import web

from llmkit.runtime import logs, vllm_app, vllm_engine
from llmkit.runtime.error_shapes import anthropic_error, openai_error
from llmkit.runtime.errors import InputError, log_unexpected
from llmkit.runtime.jobs import failure
from llmkit.runtime.openai_route import answer_chunk, sse_batched

log = logs.get("lb")

MAX_BODY = 30 * 1024 * 1024  # Runpod's limit for a load-balancing request
BUSY_RETRY_S, STARTING_RETRY_S = 1, 5  # Retry-After: a slot frees in about an answer's time
STARTING, READY, DRAINING = "starting", "ready", "draining"
SSE, NDJSON = "text/event-stream", "application/x-ndjson"


class Server:
    """The worker's HTTP server: its state, its routes, its limit on requests at once."""

    def __init__(self, served, limit):
        self.served, self.limit = served, limit
        self.state, self.in_flight = STARTING, 0
        self.idle = asyncio.Event()  # set while no request runs: SIGTERM's drain waits on it
        self.idle.set()

    def app(self, health_too=True):
        app = web.Application(client_max_size=MAX_BODY)
        if health_too:
            app.router.add_get("/ping", self.ping)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/runsync", self.native)
        app.router.add_route("*", "/{path:.*}", self.vllm)  # every route of `vllm serve`
        return app

    async def ping(self, request):
        # Runpod's load balancer: 204 initializing, 200 healthy, anything else unhealthy.
        status = {STARTING: 204, READY: 200}.get(self.state, 503)
        return web.Response(status=status)

    async def stats(self, request):
        """What the worker is doing: its state, requests in flight, vLLM's requests."""
        running = None
        if self.state != STARTING:
            processor = getattr(vllm_engine.engine(), "output_processor", None)
            running = processor.get_num_unfinished_requests() if processor else None
        return web.json_response({"state": self.state, "in_flight": self.in_flight,
                                  "limit": self.limit, "vllm_requests": running,
                                  "handler": self.served.sha})

    # --- admission: a fast no instead of a wait ---------------------------------------

    def refusal(self):
        """(status, message, Retry-After) for a request that cannot start now, else None."""
        if self.state == STARTING:
            return 503, "the worker is starting: vLLM is loading the model", STARTING_RETRY_S
        if self.state == DRAINING:
            return 503, "the worker is shutting down; retry on another worker", STARTING_RETRY_S
        if self.in_flight >= self.limit:
            return (429, f"the worker is busy: it runs {self.limit} request(s) at once "
                         "(CONCURRENCY_MODIFIER)", BUSY_RETRY_S)
        return None

    def admit(self):
        self.in_flight += 1
        self.idle.clear()

    def release(self):
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()

    # --- the native API: the user's handler ---------------------------------------------

    async def native(self, request):
        request_id = f"lb-{uuid.uuid4().hex[:12]}"
        refused = self.refusal()
        if refused:
            return _json({"id": request_id, "status": "FAILED", "error": refused[1]},
                         refused[0], refused[2])
        self.admit()
        try:
            body, problem, status = await _body(request)
            if problem is None and not (isinstance(body, dict) and "input" in body
                                        and set(body) <= {"input", "id"}):
                problem, status = ('the body must be {"input": {...}}, as a queue endpoint\'s '
                                   "/runsync takes"), 400
            if problem:
                return _json({"id": request_id, "status": "FAILED", "error": problem}, status)
            job = {"id": request_id, "input": body["input"]}
            handler = self.served.current()[0]  # this request's to its end, whatever reloads
            return await _answer(request, job, handler(job))
        finally:
            self.release()

    # --- every route `vllm serve` serves: its app, in process ----------------------------

    async def vllm(self, request):
        route, request_id = request.path, f"lb-{uuid.uuid4().hex[:12]}"
        counted = request.method not in ("GET", "HEAD")  # /v1/models, /health: always answered
        refused = self.refusal() if counted else None
        if refused:
            return _error(route, *refused)
        if counted:
            self.admit()
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _error(route, 413, f"the body is over {MAX_BODY // 2**20} MB, "
                                          "Runpod's limit")
            chat_messages = self.served.current()[1]
            if route == "/v1/chat/completions" and chat_messages is not None:
                raw = _hooked(raw, chat_messages)
                if isinstance(raw, str):
                    return _error(route, 400, raw)
            reply = await vllm_app.request(request.method, route, raw, request.query_string)
            # A client that hangs up cancels this task (handler_cancellation): hang up on
            # vLLM's app then, which aborts vLLM's request; a no-op once it has answered.
            asyncio.current_task().add_done_callback(lambda _: reply.hang_up())
            if reply.streaming:
                return await _stream_sse(request, sse_batched(reply, request_id, route))
            body = await reply.read()
            internal = await reply.failed
            if internal is not None:  # vLLM's handler of last resort: log, say one line
                return _error(route, 500, log_unexpected(request_id, internal))
            if reply.status >= 400:  # in the route's own shape, naming variables, not flags
                chunk = answer_chunk(reply, body, request.method, route)
                return _error(route, reply.status, _message(chunk), body=chunk)
            return web.Response(body=body, status=reply.status,
                                headers={"Content-Type": reply.content_type or "text/plain"})
        except ConnectionError:  # the client hung up: vLLM's request is aborted
            return None
        except Exception as err:  # never a traceback to the client
            chunk, status = failure(err, request_id, openai=True)
            return _error(route, status, chunk["error"]["message"], body=chunk)
        finally:
            if counted:
                self.release()


def _hooked(raw, chat_messages):
    """The body with the handler's chat_messages applied, or what is wrong (a str)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw  # vLLM's app says what is wrong with it
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return raw
    try:
        body["messages"] = chat_messages(list(body["messages"]))
    except InputError as err:
        return str(err)
    return json.dumps(body).encode()


def _message(chunk):
    error = chunk.get("error")
    return str(error.get("message") if isinstance(error, dict) else error)


# --- answers -------------------------------------------------------------------------------


def _json(body, status, retry_after=None):
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response(body, status=status, headers=headers)


def _error(route, status, message, retry_after=None, body=None):
    """An error in the route's own shape: Anthropic's for /v1/messages, OpenAI's for the rest."""
    if route == "/v1/messages":
        body = anthropic_error(status, message)
    elif body is None:
        body = openai_error(status, message, "RateLimitError" if status == 429 else
                            "ServiceUnavailableError" if status == 503 else None)
    return _json(body, status, retry_after)


async def _body(request):
    """(the parsed JSON body, None, 200) or (None, what is wrong with it, its status)."""
    try:
        return json.loads(await request.read()), None, 200
    except web.HTTPRequestEntityTooLarge:
        return None, f"the body is over {MAX_BODY // 2**20} MB, Runpod's limit", 413
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"the body is not valid JSON: {err}", 400


def _failed(chunk):
    return isinstance(chunk, dict) and bool(chunk.get("error"))


async def _answer(request, job, chunks):
    """The handler's chunks: one JSON body like /runsync's, or a stream if the client asks.
    A chunk with "error" fails the request, as it fails a queue job, with the same message."""
    accept = request.headers.get("Accept", "")
    streamed = SSE if SSE in accept else NDJSON if NDJSON in accept else None
    output, status, reply = [], 400, None
    try:
        async for chunk in chunks:
            if streamed and not _failed(chunk):
                if reply is None:
                    reply = await _open_stream(request, streamed)
                await reply.write(_event(streamed, chunk))
                continue
            output.append(chunk)
            if _failed(chunk):
                break
    except ConnectionError:  # the client hung up: stop the handler, and so vLLM's request
        return reply
    except Exception as err:  # the handler raised: the job's error, never a traceback
        chunk, status = failure(err, job["id"])
        output.append(chunk)
    finally:
        await chunks.aclose()
    failed = next((c for c in output if _failed(c)), None)
    if reply is not None:  # already streaming: the failure is the stream's last event
        if failed is not None:
            await reply.write(_event(streamed, failed, error=True))
        await reply.write_eof()
        return reply
    if failed is not None:
        return _json({"id": job["id"], "status": "FAILED", "error": str(failed["error"])},
                     status)
    if streamed:  # an answer with no chunks: an empty stream
        reply = await _open_stream(request, streamed)
        await reply.write_eof()
        return reply
    return _json({"id": job["id"], "status": "COMPLETED", "output": output}, 200)


async def _open_stream(request, content_type):
    reply = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
    reply.content_type = content_type
    await reply.prepare(request)
    return reply


def _event(kind, chunk, error=False):
    data = json.dumps(chunk)
    if kind == NDJSON:
        return f"{data}\n".encode()
    return f"{'event: error' + chr(10) if error else ''}data: {data}\n\n".encode()


async def _stream_sse(request, chunks):
    """vLLM's SSE text as it comes, batched; a stream that fails midway ends with an error
    event in the route's shape (openai_route.sse_batched)."""
    reply = await _open_stream(request, SSE)
    try:
        async for text in chunks:
            await reply.write(text.encode())
        await reply.write_eof()
    except ConnectionError:
        pass  # the client hung up: closing the chunks aborts vLLM's request
    finally:
        await chunks.aclose()
    return reply


# --- the worker's life -----------------------------------------------------------------------


def run(served, start_engine):
    """Serve HTTP at once (/ping says 204), start vLLM with ``start_engine()`` (it raises a
    StartupError on a bad setting or model), then serve until SIGTERM drains; returns."""
    asyncio.run(_main(served, start_engine))


async def _main(served, start_engine):
    kit = vllm_engine.settings().kit  # checked before vLLM starts: /ping answers meanwhile
    port, health_port, host = kit.port, kit.port_health, kit.host
    limit = kit.concurrency_modifier
    server = Server(served, limit)
    apps = [(server.app(health_too=health_port == port), port)]
    if health_port != port:
        apps.append((_health_app(server), health_port))
    runners = []
    # handler_cancellation: a client that hangs up cancels its handler task, which aborts
    # its vLLM request (generation.tie_to_job).
    for app, at in apps:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, at).start()
        runners.append(runner)
    log.info(f"[lb] HTTP on {host}:{port} (/runsync, /v1/...), /ping on {health_port}; "
         f"{limit} request(s) at once (CONCURRENCY_MODIFIER)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        await loop.run_in_executor(None, start_engine)  # /ping answers 204 meanwhile
        await vllm_app.app()  # vLLM's app too, before the first request
        server.state = READY
        log.info(f"[lb] ready in {time.monotonic() - started:.1f} s: /ping answers 200")
        await stop.wait()
        server.state = DRAINING
        log.info(f"[lb] SIGTERM: draining {server.in_flight} request(s) in flight")
        await server.idle.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def _health_app(server):
    app = web.Application()
    app.router.add_get("/ping", server.ping)
    return app



