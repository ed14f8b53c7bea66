"""Who may call: clients with the endpoint's API key, workers with a key derived from it."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from llmkit.endpoint.config import STATE, EndpointState
from llmkit.endpoint.httputil import ApiError


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
