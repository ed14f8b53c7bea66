"""The worker-facing API: what the runpod SDK's production loop calls (runpod 1.10).

    GET  /v2/{id}/job-take/{worker}?...&job_in_progress=0|1        one job, or 204
    GET  /v2/{id}/job-take-batch/{worker}?...&batch_size=N         a list of jobs, or 204
    POST /v2/{id}/job-stream/{worker}/{job}?...&isStream=false      one chunk: {"output": c}
    POST /v2/{id}/job-done/{worker}/{job}?...&isStream=true|false   {"output": ...}|{"error": ...}
    GET  /v2/{id}/job-stop/{worker}?...                            {"jobsToStop": [...]}, or 204
    GET  /v2/{id}/ping/{worker}?...&job_id=a,b&runpod_version=...  heartbeat (a child process)
    GET  /v2/{id}/ping/{worker}?...&status=unhealthy&check=..&reason=..  "exiting, because"
    GET  /v2/{id}/ping/{worker}?...&job_id=..&handler=SHA&reload=ok|failed&..  its handler

What the SDK does on the wire (read in runpod 1.10's serverless/modules/rp_job.py,
rp_scale.py, rp_http.py and worker.py, and run against this server):

* It builds these URLs from the RUNPOD_WEBHOOK_* variables that ``worker_env`` writes,
  by string work: it fills in ``$ID`` and ``$RUNPOD_POD_ID``, appends ``&name=value``
  (so every URL already holds a ``?``), and makes the batch and stop URLs from the take
  URL by replacing ``/job-take/``.
* It sends ``Authorization: <key>`` with no "Bearer". It waits up to 90 s on a take,
  so takes and stops may long-poll; 204 means nothing.
* Stream posts are JSON text labelled form-urlencoded. With ``return_aggregate_stream``
  the done post is ``{"output": [chunks]}``, or ``{"error": ...}`` on failure.
* The heartbeat is a forked child process (it can outlive a killed worker), every
  ``RUNPOD_PING_INTERVAL`` ms in whole seconds; it names the jobs the worker believes it
  runs, from ``.runpod_jobs.pkl`` in its working directory.
* A stop (``{"jobsToStop": [...]}``) cancels that job's asyncio task; the worker posts
  nothing more for it.
* A worker about to exit on a failed start-up sends one ping with ``status=unhealthy``,
  ``check`` and ``reason`` (runpod 1.11's fitness checks; the kit's worker loop on 1.10).
"""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

from aiohttp import web

from llmkit.endpoint import jobs, registry
from llmkit.endpoint.auth import endpoint_state, worker_key
from llmkit.endpoint.config import DEV_API_KEY, RUNSYNC_LIMIT
from llmkit.endpoint.httputil import ApiError, hung_up, read_json, wait_until

log = logging.getLogger("llmkit.endpoint")
routes = web.RouteTableDef()
P = "/v2/{endpoint_id}"
PING_INTERVAL_MS = 2000
# A draining worker's take poll is answered after this pause, so the SDK, which
# polls again at once on an empty answer, does not spin until its SIGTERM lands.
DRAINING_PAUSE_S = 0.5


def worker_env(base_url: str, endpoint_id: str, worker_id: str,
               api_key: str | None = None) -> dict[str, str]:
    """Every variable a worker process needs to run the SDK's production loop here.

    ``base_url`` is the server's root (``http://HOST:PORT``, a trailing ``/v2`` is
    fine). ``api_key`` is the endpoint's client key (default: $RUNPOD_API_KEY, else the
    dev key); the worker gets a key derived from it, never the key itself.
    """
    root = base_url.rstrip("/")
    if root.endswith("/v2"):
        root = root[:-3]
    key = worker_key(api_key or os.environ.get("RUNPOD_API_KEY") or DEV_API_KEY, endpoint_id)
    # Every URL needs a '?': the SDK appends "&job_in_progress=", "&isStream=", ...
    # The take URL must contain "/job-take/": the SDK derives the batch and stop URLs
    # from it. "$ID" and "$RUNPOD_POD_ID" are substituted by the SDK.
    query = f"?gpu=local&token={key}"
    base = f"{root}/v2/{endpoint_id}"
    return {
        "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID{query}",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID{query}",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID{query}",
        "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID{query}",
        "RUNPOD_POD_ID": worker_id,
        "RUNPOD_POD_HOSTNAME": f"{worker_id}-{urlsplit(root).hostname or 'local'}",
        "RUNPOD_ENDPOINT_ID": endpoint_id,
        "RUNPOD_AI_API_KEY": key,
        # Whole seconds only: the SDK divides by 1000, and below 1 s it never pauses.
        "RUNPOD_PING_INTERVAL": str(PING_INTERVAL_MS),
        # The start-up checks dial a public DNS server and look for a GPU.
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
    }


def _job_message(job: jobs.Job) -> dict:
    return {"id": job.id, "input": job.input}


async def _take(request: web.Request, batch: bool) -> web.Response:
    state = endpoint_state(request, worker=True)
    worker_id = request.match_info["worker_id"]
    count = 1
    if batch:
        raw = request.query.get("batch_size", "1")
        if not raw.isdigit() or not 1 <= int(raw) <= 1024:
            raise ApiError(400, f"batch_size must be an integer from 1 to 1024, got {raw!r:.20}")
        count = int(raw)
    info = state.registry.contact(worker_id)
    if not state.registry.accepts_jobs(worker_id):
        # Shutting down: never hand it a job it would accept and then drop.
        await asyncio.sleep(DRAINING_PAUSE_S)
        return web.Response(status=204)
    store = state.store
    info.open_polls += 1
    try:
        await wait_until(state, lambda: bool(store.queue) or info.state != registry.READY,
                         state.config.take_wait_s, request)
        if not store.queue or info.state != registry.READY or hung_up(request):
            return web.Response(status=204)
        taken = store.take(worker_id, count)
        if hung_up(request):  # the worker went away while we waited: keep the jobs
            store.give_back(taken)
            return web.Response(status=204)
        for job in taken:
            log.info("job %s -> %s (waited %.1f s)", job.id, worker_id,
                     job.started_at - job.submitted_at)
        if batch:
            return web.json_response([_job_message(job) for job in taken])
        return web.json_response(_job_message(taken[0]))
    finally:
        info.open_polls -= 1
        state.registry.contact(worker_id)


@routes.get(P + "/job-take/{worker_id}")
async def job_take(request: web.Request) -> web.Response:
    return await _take(request, batch=False)


@routes.get(P + "/job-take-batch/{worker_id}")
async def job_take_batch(request: web.Request) -> web.Response:
    return await _take(request, batch=True)


@routes.get(P + "/job-stop/{worker_id}")
async def job_stop(request: web.Request) -> web.Response:
    """Long-poll: the ids of this worker's jobs that were cancelled or timed out."""
    state = endpoint_state(request, worker=True)
    worker_id = request.match_info["worker_id"]
    info = state.registry.contact(worker_id)
    store = state.store
    info.open_polls += 1
    try:
        await wait_until(state, lambda: store.has_stops(worker_id)
                         or info.state != registry.READY, state.config.stop_wait_s, request)
        to_stop = store.pop_stops(worker_id)
    finally:
        info.open_polls -= 1
        state.registry.contact(worker_id)
    if not to_stop:
        return web.Response(status=204)
    log.info("telling %s to stop %s", worker_id, ", ".join(to_stop))
    return web.json_response({"jobsToStop": to_stop})


def _held_job(request: web.Request, state) -> tuple[str, jobs.Job]:
    worker_id, job_id = request.match_info["worker_id"], request.match_info["job_id"]
    state.registry.contact(worker_id)
    job = state.store.get(job_id)
    if job is None:
        raise ApiError(404, f"job {job_id!r} not found")
    if job.worker_id != worker_id:
        raise ApiError(409, f"job {job_id} is held by {job.worker_id or 'no worker'}, "
                            f"not {worker_id}")
    return worker_id, job


async def _worker_body(request: web.Request) -> dict:
    # The SDK posts JSON text labelled application/x-www-form-urlencoded.
    body = await read_json(request, RUNSYNC_LIMIT, "worker posts")
    if not isinstance(body, dict):
        raise ApiError(400, "worker post must be a JSON object")
    return body


@routes.post(P + "/job-stream/{worker_id}/{job_id}")
async def job_stream(request: web.Request) -> web.Response:
    state = endpoint_state(request, worker=True)
    worker_id, job = _held_job(request, state)
    body = await _worker_body(request)
    if "output" not in body:
        raise ApiError(400, 'a stream post needs {"output": chunk}')
    if not state.store.add_chunk(worker_id, job, body["output"]):
        return web.json_response({"ignored": f"job is {job.status}"})
    return web.json_response({})


@routes.post(P + "/job-done/{worker_id}/{job_id}")
async def job_done(request: web.Request) -> web.Response:
    state = endpoint_state(request, worker=True)
    worker_id, job = _held_job(request, state)
    body = await _worker_body(request)
    if not state.store.complete(worker_id, job, body):
        log.info("job %s: late result from %s ignored (job is %s)", job.id, worker_id,
                 job.status)
        return web.json_response({"ignored": f"job is {job.status}"})
    log.info("job %s %s on %s in %.1f s", job.id, job.status, worker_id,
             job.finished_at - job.started_at)
    return web.json_response({})


@routes.get(P + "/ping/{worker_id}")
async def ping(request: web.Request) -> web.Response:
    """Heartbeat. It names the jobs the worker believes it runs (from .runpod_jobs.pkl)."""
    state = endpoint_state(request, worker=True)
    worker_id = request.match_info["worker_id"]
    info = state.registry.workers.get(worker_id)
    if info is None:  # the heartbeat starts before the job loop's first poll
        info = state.registry.workers[worker_id] = registry.WorkerInfo(worker_id, False)
    if request.query.get("status") == "unhealthy":
        # Sent once by a worker that is about to exit (runpod 1.11, and the kit's
        # worker loop on 1.10): a failed fitness check or start-up error.
        info.unhealthy_reason = (f"{request.query.get('check', '?')}: "
                                 f"{request.query.get('reason', '')}")
        log.error("%s reports itself unhealthy and exits: %s", worker_id,
                  info.unhealthy_reason)
        return web.json_response({})
    if "handler" in request.query:  # a reloading worker says which handler it serves
        info.heard_handler(request.query)
        if info.handler["lastReloadFailed"]:
            log.warning("%s: handler reload failed, still serving %s: %s", worker_id,
                        info.handler["sha256"], info.handler["reloadError"])
    reported = [i for raw in request.query.getall("job_id", []) for i in raw.split(",") if i]
    if info.state == registry.EXITED and info.supervised:
        return web.json_response({})
    stale = [i for i in reported if (job := state.store.get(i)) is None
             or job.worker_id != worker_id]
    if stale and not info.warned_stale:
        info.warned_stale = True
        log.warning("%s reports job(s) this endpoint never gave it (%s): a stale "
                    ".runpod_jobs.pkl in its working directory? The SDK then waits for "
                    "them forever. Start each worker in a fresh directory.", worker_id,
                    ", ".join(stale))
    state.store.remind_stops(worker_id, reported)
    return web.json_response({})

