"""Queue jobs for vLLM's own routes, answered by `vllm serve`'s app in process (vllm_app.py).

Two inputs, one path:

* `{"openai_route": "/v1/chat/completions", "openai_input": {...}}`: what Runpod's
  /openai/v1/... route queues. No body (missing or {}) is a GET, as the platform sends
  GET /v1/models.
* `{"route": "/tokenize", "body": {...}, "method": "POST"}`: any route `vllm serve` serves
  for the model (/tokenize, /detokenize, /v1/embeddings, /pooling, /classify, /score,
  /rerank, ...), the official vLLM worker's generic input. `method` defaults to POST with
  a body and GET without.

A JSON answer is one chunk; an error answer (`{"error": ...}`) fails the job. A streamed
answer is vLLM's SSE text as strings that join into its SSE body, batched like the native
stream. The user's handler is bypassed; `serve(handler, chat_messages=...)` opts its
prompt change in for /v1/chat/completions.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re

from llmkit.runtime import vllm_app, vllm_engine
from llmkit.runtime.config import flags_as_variables
from llmkit.runtime.error_shapes import openai_error, stream_error
from llmkit.runtime.errors import InputError, log_unexpected
from llmkit.runtime.generation import gap_batched
from llmkit.runtime.inputs import type_name

PLATFORM_FIELDS = ("openai_route", "openai_input")
GENERIC_FIELDS = ("route", "body", "method")


def is_openai_job(job_input) -> bool:
    """Runpod's OpenAI route, or the generic {route, body, method} input (a string route
    starting with "/" and nothing else, so a handler's own "route" field stays its own)."""
    if not isinstance(job_input, dict):
        return False
    if "openai_route" in job_input:
        return True
    route = job_input.get("route")
    return isinstance(route, str) and route.startswith("/") and set(job_input) <= set(
        GENERIC_FIELDS)


def _request(job_input):
    """(method, path, body or None) for a job, or raise InputError naming the field."""
    platform = "openai_route" in job_input
    fields = PLATFORM_FIELDS if platform else GENERIC_FIELDS
    unknown = sorted(set(job_input) - set(fields))
    if unknown:
        raise InputError(f"unknown field input.{unknown[0]:.40}; this input takes "
                         f"{' and '.join(fields)}")
    path = job_input.get(fields[0])
    if not isinstance(path, str) or not path.startswith("/") or "?" in path:
        raise InputError(f"input.{fields[0]} must be a path such as /v1/chat/completions, "
                         f"got {path!r:.60}")
    body = job_input.get(fields[1])
    if body is not None and not isinstance(body, dict):
        raise InputError(f"input.{fields[1]} must be a JSON object, got {type_name(body)}")
    method = "POST" if body else "GET"
    if not platform and job_input.get("method") is not None:
        method = job_input["method"]
        if method not in ("GET", "POST", "PUT", "DELETE"):
            raise InputError(f"input.method must be GET, POST, PUT or DELETE, got "
                             f"{method!r:.20}")
    return method, path, body


async def openai_job(job_input, job_id, chat_messages=None):
    try:
        method, path, body = _request(job_input)
        if chat_messages is not None and path == "/v1/chat/completions" and body \
                and isinstance(body.get("messages"), list):  # the handler's change, opted in
            body = {**body, "messages": chat_messages(list(body["messages"]))}
    except InputError as err:
        field = str(err).split()[0]
        yield openai_error(400, str(err), param=field[6:] if field.startswith("input.") else None)
        return
    raw = json.dumps(body).encode() if body is not None else b""
    try:
        reply = await vllm_app.request(method, path, raw)
    except Exception as err:  # the app raised before answering
        yield openai_error(500, log_unexpected(job_id, err), "InternalServerError")
        return
    # The SDK stops a cancelled job by cancelling its task, often while a chunk is posted:
    # hang up on vLLM's app then too, which aborts vLLM's request.
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda _: reply.hang_up())
    if reply.streaming:
        async for text in sse_batched(reply, job_id, path):
            yield text
        return
    raw = await reply.read()
    internal = await reply.failed
    if internal is not None:  # vLLM's handler of last resort answered: log, say one line
        yield openai_error(500, log_unexpected(job_id, internal), "InternalServerError")
        return
    yield answer_chunk(reply, raw, method, path)


def answer_chunk(reply, raw, method, path):
    """The job's chunk for vLLM's answer: its JSON, an error that fails the job, or text."""
    try:
        answer = json.loads(raw) if raw.strip() else None
    except ValueError:
        answer = raw.decode(errors="replace")
    if reply.status < 400:
        if isinstance(answer, dict):
            return answer
        return {"status": reply.status, "content_type": reply.content_type, "body": answer}
    if isinstance(answer, dict) and answer.get("error"):
        error = answer["error"]
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            error["message"] = _plain(error["message"])
            if isinstance(error.get("param"), str):  # "body.temperature": the body's field
                error["param"] = error["param"].removeprefix("body.")
            # The HTTP status, for the edge that answers the client: vLLM's Messages errors
            # (Anthropic's shape) carry none.
            error.setdefault("code", reply.status)
        return answer
    detail = answer.get("detail") if isinstance(answer, dict) else answer
    if reply.status == 404:
        message = f"vLLM serves no {path} for this model"
    elif reply.status == 405:  # the platform sends a request without a body as a GET
        message = (f"{path} takes no body (it is a GET)" if method == "POST" else
                   f"{path} is a POST: it needs a body" if method == "GET" else
                   f"{path} takes no {method}")
    else:
        message = f"{path}: {detail}"
    return openai_error(reply.status, message, "NotFoundError" if reply.status == 404 else
                        "MethodNotAllowedError" if reply.status == 405 else None)


async def sse_batched(reply, job_id, path):
    """vLLM's SSE text, batched like the native stream: the first event at once, then at
    most one string per STREAM_INTERVAL_MS."""
    async for text, _ in gap_batched(_sse_pieces(reply, job_id, path), vllm_engine.settings().kit):
        yield text


def _plain(message):
    """vLLM's message for a person: its request model's validation errors as "field: what"
    (vLLM lists each as a dict), and variables where vLLM names its flags
    ("requires --tool-call-parser": TOOL_CALL_PARSER is what a worker's user sets)."""
    lines = message.strip().splitlines()
    if len(lines) > 1 and re.fullmatch(r"\d+ validation errors?:", lines[0].strip()):
        try:
            errors = [ast.literal_eval(line.strip()) for line in lines[1:]]
            first = errors[0]
            where = str(first.get("loc", "")).removeprefix("body.").removeprefix("body")
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            message = f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"
        except (ValueError, SyntaxError, KeyError, AttributeError, IndexError):
            pass  # another shape: vLLM's text as it is
    return flags_as_variables(message, vllm_engine.settings().variable_names)


async def _sse_pieces(reply, job_id, path):
    """(SSE text, last?) pairs; an unexpected error mid-stream ends the stream with an error
    event in the route's own shape, as vLLM's server (or Anthropic's API) does."""
    async for piece in reply.body:
        text = piece.decode()
        yield text, text.endswith("data: [DONE]\n\n")
    internal = await reply.failed
    if internal is not None:
        yield stream_error(path, 500, log_unexpected(job_id, internal)), True
