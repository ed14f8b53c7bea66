"""The client-facing API, with the platform's paths, methods and reply shapes.

    POST /v2/{id}/run | /runsync?wait=ms     GET /v2/{id}/status/{job} | /stream/{job}
    POST /v2/{id}/cancel/{job} | /retry/{job} | /purge-queue     GET /v2/{id}/health
    GET  /v2/{id}/workers   (local only: each worker's state, for debugging)
"""

from __future__ import annotations

import logging

from aiohttp import web

from llmkit.endpoint import jobs
from llmkit.endpoint.auth import endpoint_state
from llmkit.endpoint.config import RUN_LIMIT, RUNSYNC_LIMIT, EndpointState
from llmkit.endpoint.httputil import ApiError, read_json, wait_until

log = logging.getLogger("llmkit.endpoint")
routes = web.RouteTableDef()
P = "/v2/{endpoint_id}"

WEEK_MS = 7 * 24 * 3600 * 1000
# policy field: (lowest, highest) in ms, as the platform documents them.
POLICY_BOUNDS = {"executionTimeout": (5000, WEEK_MS), "ttl": (10000, WEEK_MS)}
TOP_FIELDS = ("input", "webhook", "policy", "s3Config")
RUNSYNC_WAIT_MS = (1000, 300000, 90000)  # lowest, highest, default


def parse_submission(body) -> dict:
    """Check a /run or /runsync body; return JobStore.submit() keyword arguments."""
    if not isinstance(body, dict):
        raise ApiError(400, 'request body must be a JSON object such as {"input": {...}}')
    unknown = sorted(set(body) - set(TOP_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; expected {', '.join(TOP_FIELDS)}")
    if "input" not in body:
        raise ApiError(400, 'request body needs an "input" field: {"input": {...}}')
    args = {"job_input": body["input"]}
    webhook = body.get("webhook")
    if webhook is not None:
        if not isinstance(webhook, str) or not webhook.startswith(("http://", "https://")):
            raise ApiError(400, "webhook must be an http:// or https:// URL")
        args["webhook"] = webhook
    policy = body.get("policy", {})
    if not isinstance(policy, dict):
        raise ApiError(400, "policy must be an object")
    for name, value in policy.items():
        if name == "lowPriority":  # only affects scaling on the platform
            if not isinstance(value, bool):
                raise ApiError(400, "policy.lowPriority must be true or false")
            continue
        if name not in POLICY_BOUNDS:
            raise ApiError(400, f"unknown field policy.{name}; expected executionTimeout, ttl, "
                                "lowPriority")
        low, high = POLICY_BOUNDS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ApiError(400, f"policy.{name} must be an integer number of milliseconds "
                                f"from {low} to {high}, got {value!r:.40}")
    if "executionTimeout" in policy:
        args["execution_timeout_s"] = policy["executionTimeout"] / 1000
    if "ttl" in policy:
        args["ttl_s"] = policy["ttl"] / 1000
    return args


def _job(state: EndpointState, request: web.Request) -> jobs.Job:
    job_id = request.match_info["job_id"]
    job = state.store.get(job_id)
    if job is None:
        raise ApiError(404, f"job {job_id!r} not found: unknown id, or its result expired")
    return job


def _submitted(job: jobs.Job, sync: bool) -> None:
    log.info("job %s queued (%s)", job.id, "/runsync" if sync else "/run")


@routes.post(P + "/run")
async def run(request: web.Request) -> web.Response:
    state = endpoint_state(request)
    args = parse_submission(await read_json(request, RUN_LIMIT, "/run"))
    job = state.store.submit(sync=False, **args)
    _submitted(job, sync=False)
    return web.json_response({"id": job.id, "status": job.status})


@routes.post(P + "/runsync")
async def runsync(request: web.Request) -> web.Response:
    state = endpoint_state(request)
    low, high, default = RUNSYNC_WAIT_MS
    raw_wait = request.query.get("wait", str(default))
    try:
        wait_ms = int(raw_wait)
    except ValueError:
        raise ApiError(400, f"wait must be milliseconds from {low} to {high}, "
                            f"got {raw_wait!r:.40}") from None
    if not low <= wait_ms <= high:
        raise ApiError(400, f"wait must be milliseconds from {low} to {high}, got {wait_ms}")
    args = parse_submission(await read_json(request, RUNSYNC_LIMIT, "/runsync"))
    job = state.store.submit(sync=True, **args)
    _submitted(job, sync=True)
    # Past the wait the client gets the job's current state and polls /status.
    await wait_until(state, lambda: job.final, wait_ms / 1000, request)
    return web.json_response(job.payload())


@routes.get(P + "/status/{job_id}")
@routes.post(P + "/status/{job_id}")
async def status(request: web.Request) -> web.Response:
    state = endpoint_state(request)
    return web.json_response(_job(state, request).payload())


@routes.get(P + "/stream/{job_id}")
@routes.post(P + "/stream/{job_id}")
async def stream(request: web.Request) -> web.Response:
    """Only the chunks that are new since the last poll."""
    state = endpoint_state(request)
    job = _job(state, request)
    await wait_until(state, lambda: job.final or job.stream_read < len(job.stream),
                     state.config.stream_wait_s, request)
    reply = {"id": job.id, "status": job.status,
             "stream": [{"output": chunk} for chunk in state.store.read_stream(job)]}
    if job.error is not None:
        reply["error"] = job.error
    return web.json_response(reply)


@routes.post(P + "/cancel/{job_id}")
async def cancel(request: web.Request) -> web.Response:
    state = endpoint_state(request)
    job = _job(state, request)
    if not job.final:
        state.store.cancel(job)
        log.info("job %s cancelled", job.id)
    return web.json_response({"id": job.id, "status": job.status})


@routes.post(P + "/retry/{job_id}")
async def retry(request: web.Request) -> web.Response:
    state = endpoint_state(request)
    job = _job(state, request)
    if job.status not in (jobs.FAILED, jobs.TIMED_OUT):
        raise ApiError(400, f"only FAILED or TIMED_OUT jobs can be retried; job {job.id} is "
                            f"{job.status}")
    state.store.retry(job)
    log.info("job %s queued again (/retry)", job.id)
    return web.json_response({"id": job.id, "status": job.status})


@routes.post(P + "/purge-queue")
async def purge_queue(request: web.Request) -> web.Response:
    state = endpoint_state(request)
    removed = state.store.purge_queue()
    log.info("purged %d queued job(s)", removed)
    return web.json_response({"removed": removed, "status": "completed"})


@routes.get(P + "/health")
async def health(request: web.Request) -> web.Response:
    state = endpoint_state(request)
    busy = {job.worker_id for job in state.store.jobs.values() if job.status == jobs.IN_PROGRESS}
    return web.json_response({"jobs": state.store.counts(),
                              "workers": state.registry.health(busy),
                              # local: which handler each worker serves (HANDLER_RELOAD)
                              "handlers": state.registry.handlers()})


@routes.get(P + "/workers")
async def workers(request: web.Request) -> web.Response:
    """Local extension: every worker this endpoint has seen, with its jobs and exit."""
    state = endpoint_state(request)
    return web.json_response({"workers": [
        info.describe([job.id for job in state.store.held_by(info.id)])
        for info in state.registry.workers.values()]})
