"""Small HTTP helpers shared by the client-facing and worker-facing routes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from llmkit.endpoint.jobs import JobStore
from llmkit.endpoint.registry import Registry

MB = 1024 * 1024
# The platform's body limits.
RUN_LIMIT = 10 * MB
RUNSYNC_LIMIT = 20 * MB
# The key used when neither --api-key nor $RUNPOD_API_KEY is set. Local only.
DEV_API_KEY = "local-dev-key"


@dataclass
class EndpointConfig:
    endpoint_id: str = "local"
    api_key: str = DEV_API_KEY
    execution_timeout_s: float = 600.0
    # Long-polls of a worker's job-take and job-stop. Short, because a worker that gets
    # SIGTERM from elsewhere (not drained by us) waits for its open polls before it
    # exits, and would accept and then drop a job handed to it meanwhile.
    take_wait_s: float = 5.0
    stop_wait_s: float = 5.0
    stream_wait_s: float = 2.0    # a /stream poll waits this long for a new chunk


@dataclass
class EndpointState:
    config: EndpointConfig
    store: JobStore
    registry: Registry
    closing: bool = False  # shutting down: every long-poll answers now


STATE = web.AppKey("state", EndpointState)


class ApiError(Exception):
    """Answered as {"error": message} with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def worker_key(api_key: str, endpoint_id: str) -> str:
    """The key workers present. Derived, so the client key (maybe a real Runpod key
    from $RUNPOD_API_KEY) never lands in a worker's environment or URLs."""
    digest = hmac.new(api_key.encode(), f"worker:{endpoint_id}".encode(), hashlib.sha256)
    return "wk-" + digest.hexdigest()[:32]


def _presented_key(request: web.Request) -> str:
    header = request.headers.get("Authorization", "").strip()
    if header[:7].lower() == "bearer ":
        header = header[7:].strip()
    return header


def endpoint_state(request: web.Request, *, worker: bool = False) -> EndpointState:
    """Check the key and the endpoint id of a request; return the endpoint's state."""
    state = request.app[STATE]
    config = state.config
    if worker:
        # The SDK sends `Authorization: <key>`; the key is also in the webhook URLs,
        # because a ~/.runpod/config.toml key overrides the header in the SDK.
        expected = worker_key(config.api_key, config.endpoint_id)
        presented = [_presented_key(request), request.query.get("token", "")]
    else:
        expected = config.api_key
        presented = [_presented_key(request)]
    if not any(hmac.compare_digest(p.encode(), expected.encode()) for p in presented if p):
        what = "worker key" if worker else "API key: send `Authorization: Bearer <key>`"
        raise ApiError(401, f"unauthorized: missing or wrong {what}")
    if request.match_info.get("endpoint_id") != config.endpoint_id:
        raise ApiError(404, f"endpoint {request.match_info.get('endpoint_id')!r} not found; "
                            f"this server is endpoint {config.endpoint_id!r}")
    return state


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
