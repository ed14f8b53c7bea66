"""Error bodies in each API's own shape: OpenAI's (chat, completions, the Responses API)
and Anthropic's (the Messages API). No vLLM here: the local endpoint, which answers HTTP,
writes them too."""

from __future__ import annotations

import json

# Anthropic's error types by HTTP status (docs.anthropic.com, "Errors").
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 529: "overloaded_error"}


def openai_error(code, message, err_type=None, param=None):
    """OpenAI's error body, as vLLM writes it; a truthy "error" fails the job."""
    return {"error": {"message": message, "type": err_type or "BadRequestError",
                      "param": param, "code": code}}


def anthropic_type(status):
    return ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error(status, message):
    """Anthropic's error body: {"type": "error", "error": {"type", "message"}}."""
    return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}


def stream_error(route, status, message):
    """The server-sent events that end a stream on an error, in the route's own shape."""
    if route == "/v1/messages":
        return f"event: error\ndata: {json.dumps(anthropic_error(status, message))}\n\n"
    if route == "/v1/responses":
        error = {"type": "error", "code": str(status), "message": message, "param": None}
        return f"event: error\ndata: {json.dumps(error)}\n\n"
    error = openai_error(status, message, "InternalServerError" if status >= 500 else None)
    return f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n"
