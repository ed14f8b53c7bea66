"""HTTP helpers for both APIs: errors as JSON, bodies within limits, long-polls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from llmkit.endpoint.config import MB, RUNSYNC_LIMIT, EndpointState


class ApiError(Exception):
    """Answered as {"error": message} with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_json(request: web.Request, limit: int, route: str) -> Any:
    """The request body as JSON, refusing bodies over the platform's size limit."""
    too_big = ApiError(413, f"request body is over the {limit // MB} MB limit of {route}")
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_big from None
    if len(raw) > limit:
        raise too_big
    if not raw.strip():
        raise ApiError(400, 'request body is empty; expected JSON such as {"input": {...}}')
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None


def hung_up(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def wait_until(state: EndpointState, ready: Callable[[], bool], timeout: float,
                     request: web.Request | None = None) -> bool:
    """Long-poll: wait for ``ready()`` (re-checked on every store change), the timeout,
    or the caller hanging up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not ready():
        left = deadline - loop.time()
        if left <= 0 or state.closing or (request is not None and hung_up(request)):
            return False
        # Wake at least twice a second to notice a caller that hung up.
        await state.store.signal.wait(min(left, 0.5))
    return True


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error is JSON {"error": ...}, as the platform answers."""
    try:
        return await handler(request)
    except ApiError as err:
        return web.json_response({"error": err.message}, status=err.status)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        message = {
            404: f"no such route: {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"request body is over the {RUNSYNC_LIMIT // MB} MB limit",
        }.get(err.status, err.text or err.reason)
        return web.json_response({"error": message}, status=err.status)
