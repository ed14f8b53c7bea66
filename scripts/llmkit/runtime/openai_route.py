"""Runpod's OpenAI route: vLLM's own serving layer, on the worker's engine.

The platform turns a request to /openai/v1/... into a job whose input holds
`openai_route` and `openai_input`. This answers it with the body vLLM's server would
send, or, streaming, the strings that form its SSE body: OpenAI's chat completions,
completions, models and Responses API, and Anthropic's Messages API, each through the
class `vllm serve` uses for it. It bypasses the user's handler; a handler opts its prompt
change in with `serve(handler, chat_messages=...)`, which rewrites the messages of every
/v1/chat/completions request. Errors are OpenAI's shape here; the HTTP edge (the
platform, the local endpoint) gives /v1/messages Anthropic's.
"""

from __future__ import annotations

import uuid

from vllm.exceptions import GracefulHTTPError, VLLMClientError

from llmkit.runtime import vllm_engine
from llmkit.runtime.config import flags_as_variables
from llmkit.runtime.error_shapes import openai_error, stream_error
from llmkit.runtime.errors import log_unexpected
from llmkit.runtime.generation import gap_batched, tie_to_job
from llmkit.runtime.inputs import InputError, type_name

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/responses",
          "/v1/messages")


def is_openai_job(job_input) -> bool:
    return isinstance(job_input, dict) and "openai_route" in job_input


def _serving(route):
    """(vLLM's request model, the serving object's name on the app state, its method)."""
    if route == "/v1/chat/completions":
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        return ChatCompletionRequest, "openai_serving_chat", "create_chat_completion"
    if route == "/v1/completions":
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        return CompletionRequest, "openai_serving_completion", "create_completion"
    if route == "/v1/responses":
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
        return ResponsesRequest, "openai_serving_responses", "create_responses"
    from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
    return AnthropicMessagesRequest, "anthropic_serving_messages", "create_messages"


async def openai_job(job_input, job_id, chat_messages=None):
    from pydantic import ValidationError  # vLLM's own dependency, as its protocol models are
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    unknown = sorted(set(job_input) - {"openai_route", "openai_input"})
    route, body = job_input.get("openai_route"), job_input.get("openai_input")
    if unknown:
        yield openai_error(400, f"unknown field input.{unknown[0]:.40}; the OpenAI route "
                                "takes openai_route and openai_input", param=unknown[0][:40])
        return
    if route not in ROUTES:
        yield openai_error(404, f"input.openai_route must be one of {', '.join(ROUTES)}, "
                                f"got {route!r:.60}", "NotFoundError", "openai_route")
        return
    state = await vllm_engine.openai_state()
    if route == "/v1/models":  # no body: a GET, as the platform sends it
        if body not in (None, {}):
            yield openai_error(405, "/v1/models takes no body (it is a GET)",
                               "MethodNotAllowedError")
            return
        yield (await state.openai_serving_models.show_available_models()).model_dump(mode="json")
        return
    if body in (None, {}):  # a GET
        yield openai_error(405, f"{route} is a POST: it needs a body in input.openai_input",
                           "MethodNotAllowedError")
        return
    if not isinstance(body, dict):
        yield openai_error(400, f"input.openai_input must be a JSON object, got "
                                f"{type_name(body)}", param="openai_input")
        return
    model, serving_name, method = _serving(route)
    chat = route == "/v1/chat/completions"
    try:
        request = model.model_validate(body)
        if chat and chat_messages is not None:  # the handler's prompt change, opted in
            request.messages = chat_messages(list(request.messages))
    except ValidationError as err:
        yield openai_error(400, _validation_message(err), param=_validation_param(err))
        return
    except InputError as err:  # the hook refused the messages
        yield openai_error(400, str(err), param="messages")
        return
    serving = getattr(state, serving_name, None)
    if serving is None:
        yield openai_error(501, f"this model does not serve {route}", "NotImplementedError")
        return
    if "request_id" in model.model_fields:  # our id, to abort vLLM's request on a cancel
        request.request_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
        done = tie_to_job(vllm_engine.engine(), request.request_id, job_id)
    else:  # Anthropic's request has no id of ours: vLLM aborts it when its generator closes
        def done():
            pass
    try:
        result = await getattr(serving, method)(request, None)
    except (VLLMClientError, GracefulHTTPError, ValueError, TypeError, OverflowError) as err:
        result = create_error_response(err)  # vLLM's own mapping of its errors to statuses
    if isinstance(result, ErrorResponse):
        done()
        error = result.model_dump(mode="json")
        # vLLM names its flags ("requires --tool-call-parser"): say which variable to set.
        error["error"]["message"] = flags_as_variables(
            error["error"]["message"], vllm_engine.settings().variable_names)
        yield error
    elif not hasattr(result, "__aiter__"):
        done()
        # As vLLM's server writes each: Anthropic's without nulls, the Responses API's by alias.
        yield result.model_dump(exclude_none=True) if route == "/v1/messages" \
            else result.model_dump(mode="json", by_alias=True)
    else:  # streaming: vLLM's SSE text, batched like the native stream
        events = _sse_events(result) if route == "/v1/responses" else result
        async for text in gap_batched(_sse_pieces(events, job_id, route), vllm_engine.settings(),
                                      on_end=done):
            yield text


async def _sse_events(events):
    """The Responses API's event objects as SSE text, as vLLM's server writes them."""
    async for event in events:
        yield (f"event: {getattr(event, 'type', 'unknown')}\n"
               f"data: {event.model_dump_json(indent=None, by_alias=True)}\n\n")


async def _sse_pieces(events, job_id, route):
    """(SSE text, last?) pairs; an unexpected error mid-stream ends the stream with an error
    event in the route's own shape, as vLLM's server (or Anthropic's API) does."""
    try:
        async for event in events:
            yield event, event.startswith("data: [DONE]")
    except Exception as err:
        message = log_unexpected(job_id, err)
        yield stream_error(route, 500, message), True


def _validation_message(err):
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith(
        ("function-", "union[", "tagged-union", "list[", "json-or-python")))
    msg = first.get("msg", "invalid request")
    count = err.error_count()
    more = f" (and {count - 1} more error{'s' * (count > 2)})" if count > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


def _validation_param(err):
    first = err.errors()[0] if err.errors() else {}
    loc = first.get("loc", ())
    return str(loc[0]) if loc else None
