"""An endpoint's settings, and the state the app keeps beside them (jobs, workers)."""

from __future__ import annotations

from dataclasses import dataclass

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
