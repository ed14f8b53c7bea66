"""The OpenAI-compatible route, as the platform's gateway serves it.

    POST /v2/{id}/openai/v1/chat/completions | /completions | /responses | /messages
    GET  /v2/{id}/openai/v1/models

Clients use the official ``openai`` client with ``base_url=.../v2/{id}/openai/v1``, and
Anthropic's ``anthropic`` client (Messages) with ``base_url=.../v2/{id}/openai``.
Each request becomes an ordinary job, ``{"openai_route": "/v1/...", "openai_input":
<the request body>}`` (``/v1/models`` has no body), that any worker takes as usual.
The handler answers with one dict (the response body) or, for ``"stream": true``,
strings that joined form the server-sent-events body; this module relays them as they
arrive. A failed job becomes an error body with a fitting status, in the API's own shape
(Anthropic's for /messages, OpenAI's for the rest), so each client raises its own exception
types. A client that hangs up cancels its job.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from http import HTTPStatus
from typing import Any

from aiohttp import web

from llmkit.endpoint import jobs
from llmkit.endpoint.auth import endpoint_state
from llmkit.endpoint.config import RUNSYNC_LIMIT, EndpointState
from llmkit.endpoint.httputil import ApiError, hung_up, read_json
from llmkit.runtime.error_shapes import anthropic_error, stream_error

log = logging.getLogger("llmkit.endpoint")
routes = web.RouteTableDef()
P = "/v2/{endpoint_id}/openai/v1"
_OPENAI_PATH = re.compile(r"^/v2/[^/]+/openai(/|$)")
POLL_S = 0.5  # how often a waiting request checks that its client is still there

# Statuses for jobs that ended without an answer. 499 is what Google's APIs and nginx
# answer for a cancelled request; the openai client retries neither (x-should-retry).
CANCELLED_STATUS, TIMED_OUT_STATUS, SHUTDOWN_STATUS = 499, 504, 503
# The openai client's names for these statuses (vLLM's error bodies use them too).
_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
          404: "NotFoundError", 409: "ConflictError", 422: "UnprocessableEntityError",
          429: "RateLimitError", 499: "CancelledError", 504: "TimeoutError"}


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    if status >= 500:
        return "InternalServerError"
    try:
        return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        return "BadRequestError"


def error_response(status: int, message: str, *, err_type: str | None = None,
                   param: Any = None, code: Any = None, retry: bool = True,
                   route: str = "") -> web.Response:
    """OpenAI's error shape, {"error": {"message", "type", "param", "code"}}; for
    /v1/messages, Anthropic's, {"type": "error", "error": {"type", "message"}}."""
    body = anthropic_error(status, message) if route == "/v1/messages" else \
        {"error": {"message": message, "type": err_type or error_type(status),
                   "param": param, "code": status if code is None else code}}
    headers = None if retry else {"x-should-retry": "false"}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Errors on the OpenAI route in OpenAI's shape (the rest of the API keeps the
    platform's {"error": "..."}). Registered inside ``json_errors``."""
    if not _OPENAI_PATH.match(request.path):
        return await handler(request)
    route = "/v1/messages" if request.path.endswith("/v1/messages") else ""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err.status, err.message, route=route)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        message = {
            404: f"no such route: {request.method} {request.path}; the OpenAI route serves "
                 "POST /chat/completions, /completions, /responses and /messages, and "
                 "GET /models",
            405: f"method {request.method} is not allowed on {request.path}",
        }.get(err.status, err.text or err.reason)
        return error_response(err.status, message, route=route)


# ---- the routes ------------------------------------------------------------------------


def _route(route: str, has_body: bool = True):
    """The handler of one OpenAI path: its request becomes a job for ``route``."""
    async def serve(request: web.Request) -> web.StreamResponse:
        return await _serve(request, route, has_body)
    return serve


# The routes Runpod's gateway documents; the worker answers each with vLLM's own app
# (llmkit/runtime/vllm_app.py).
for _path in ("/chat/completions", "/completions", "/responses", "/messages"):
    routes.post(P + _path)(_route("/v1" + _path))
routes.get(P + "/models")(_route("/v1/models", has_body=False))


async def _serve(request: web.Request, route: str, has_body: bool = True) -> web.StreamResponse:
    state = endpoint_state(request)
    job_input: dict[str, Any] = {"openai_route": route}
    if has_body:
        body = await read_json(request, RUNSYNC_LIMIT, f"/openai{route}")
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object, as the OpenAI API "
                                f"defines for {route}")
        job_input["openai_input"] = body
    job = state.store.submit(job_input, sync=True)
    log.info("job %s queued (/openai%s)", job.id, route)
    try:
        # The first thing the worker sends decides the reply: strings are a stream
        # (sent on as they come), a dict is the whole body (sent when the job ends).
        if not await _wait(state, job, request, lambda: bool(job.stream)):
            return web.Response(status=499)  # nobody is listening
        if job.stream and isinstance(job.stream[0], str):
            return await _relay_stream(state, job, request, route)
        if not await _wait(state, job, request, lambda: False):
            return web.Response(status=499)
        return _final_reply(state, job, route)
    finally:
        if not job.final:  # the client hung up, or the server is stopping this request
            state.store.cancel(job)
            log.info("job %s cancelled: its OpenAI client went away", job.id)


async def _wait(state: EndpointState, job: jobs.Job, request: web.Request, ready) -> bool:
    """Until ``ready()`` or the job is final; False if the client hung up."""
    while not (ready() or job.final):
        if hung_up(request):
            return False
        await state.store.signal.wait(POLL_S)
    return True


def _final_reply(state: EndpointState, job: jobs.Job, route: str) -> web.Response:
    if job.status != jobs.COMPLETED:
        return _job_error(state, job, route)
    output = job.payload().get("output")
    # return_aggregate_stream makes a generator's output the list of what it yielded.
    if isinstance(output, list) and len(output) == 1:
        output = output[0]
    if not isinstance(output, dict):
        log.warning("job %s: the worker's answer is not an OpenAI response body: %.200r",
                    job.id, output)
        return error_response(500, f"job {job.id}: the worker answered with "
                                   f"{type(output).__name__}, not a response body "
                                   "(one JSON object)", route=route)
    return web.json_response(output)


async def _relay_stream(state: EndpointState, job: jobs.Job, request: web.Request,
                        route: str) -> web.StreamResponse:
    reply = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
    reply.content_type = "text/event-stream"
    reply.charset = "utf-8"
    await reply.prepare(request)
    sent = 0
    try:
        while True:
            if sent < len(job.stream):
                new, sent = job.stream[sent:], len(job.stream)
                await reply.write("".join(_sse_text(c) for c in new).encode())
                continue
            if job.final:
                break
            if not await _wait(state, job, request, lambda n=sent: n < len(job.stream)):
                return reply  # the client hung up: _serve cancels the job
        if job.status != jobs.COMPLETED:
            # Mid-stream failure: an error event in the route's shape, then the end.
            failed = _job_error(state, job, route)
            body = json.loads(failed.text)
            message = (body.get("error") or {}).get("message", "the job failed")
            await reply.write(stream_error(route, failed.status, message).encode())
        await reply.write_eof()
    except ConnectionError:
        pass  # the client hung up while we wrote: _serve cancels the job
    return reply


def _sse_text(chunk: Any) -> str:
    # The handler yields SSE text; anything else is sent as one event of its own.
    return chunk if isinstance(chunk, str) else f"data: {json.dumps(chunk)}\n\n"


# ---- a job that ended without an answer ----------------------------------------------------


def _job_error(state: EndpointState, job: jobs.Job, route: str) -> web.Response:
    if job.status == jobs.CANCELLED:
        return error_response(CANCELLED_STATUS, f"job {job.id} was cancelled before it "
                              "finished (POST /cancel or /purge-queue)", retry=False,
                              route=route)
    if job.status == jobs.TIMED_OUT:
        return error_response(TIMED_OUT_STATUS, f"job {job.id}: {job.error}", retry=False,
                              route=route)
    if state.closing:
        return error_response(SHUTDOWN_STATUS, f"job {job.id}: {job.error}", route=route)
    return worker_error(job.error or "the job failed with no message", route)


def worker_error(text: str, route: str = "") -> web.Response:
    """A FAILED job's error string as an OpenAI error.

    The runpod SDK turns a yielded {"error": value} into ``str(value)``, so an OpenAI
    error dict arrives as its Python repr; an exception in the handler arrives as JSON
    (``error_message``, with a traceback that stays on the worker) or as text."""
    parsed = _parse(text)
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        parsed = parsed["error"]  # a whole error body
    if isinstance(parsed, dict) and "message" in parsed:
        code = parsed.get("code")
        ok = isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599
        status = code if ok else 500
        return error_response(status, str(parsed["message"]), err_type=parsed.get("type"),
                              param=parsed.get("param"), code=code, route=route)
    if isinstance(parsed, dict) and "error_message" in parsed:  # the SDK's exception report
        return error_response(500, f"the handler raised: {parsed['error_message']}",
                              route=route)
    # The SDK's text for an exception in a generator: "handler: <text> \ntraceback: ..."
    message = text.split("\ntraceback:", 1)[0].strip()
    return error_response(500, message, route=route)


def _parse(text: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
    return None
