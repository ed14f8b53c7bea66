"""The aiohttp application: both APIs, the job store, and the housekeeping loop."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from llmkit.endpoint import openai_api, public_api, worker_api
from llmkit.endpoint.config import RUNSYNC_LIMIT, STATE, EndpointConfig, EndpointState
from llmkit.endpoint.httputil import json_errors
from llmkit.endpoint.jobs import Job, JobStore
from llmkit.endpoint.registry import Registry

log = logging.getLogger("llmkit.endpoint")
HOUSEKEEPING_S = 1.0
WEBHOOK_ATTEMPTS, WEBHOOK_RETRY_S = 3, 10.0  # as the platform: 2 retries, 10 s apart


def build_app(config: EndpointConfig) -> web.Application:
    # Room for the largest body (/runsync); each route checks its own limit. The OpenAI
    # route's errors take OpenAI's shape (inner middleware), the rest the platform's.
    app = web.Application(middlewares=[json_errors, openai_api.openai_errors],
                          client_max_size=RUNSYNC_LIMIT + 65536)
    app[STATE] = EndpointState(config, JobStore(config.execution_timeout_s), Registry())
    app.add_routes(public_api.routes)
    app.add_routes(openai_api.routes)
    app.add_routes(worker_api.routes)
    app.cleanup_ctx.append(_background)
    return app


async def _background(app: web.Application):
    state = app[STATE]
    session = aiohttp.ClientSession()
    webhooks: set[asyncio.Task] = set()

    def on_final(job: Job) -> None:
        if job.webhook:
            task = asyncio.create_task(_send_webhook(session, job.webhook, job.payload()))
            webhooks.add(task)
            task.add_done_callback(webhooks.discard)

    state.store.on_final(on_final)
    housekeeping = asyncio.create_task(_housekeeping(state))
    yield
    housekeeping.cancel()
    for task in list(webhooks):
        task.cancel()
    await asyncio.gather(housekeeping, *webhooks, return_exceptions=True)
    await session.close()


async def _housekeeping(state: EndpointState) -> None:
    """Expire old results, and fail the jobs of external workers that went silent."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_S)
        state.store.expire()
        for info in state.registry.lost_external():
            reason = "stopped responding (no request for 30 s)"
            state.registry.exited(info.id, reason, crashed=True)
            lost = state.store.worker_lost(info.id, reason)
            log.warning("%s %s; failed its job(s): %s", info.id, reason,
                        ", ".join(j.id for j in lost) or "none")


async def _send_webhook(session: aiohttp.ClientSession, url: str, payload: dict) -> None:
    for attempt in range(WEBHOOK_ATTEMPTS):
        try:
            async with session.post(url, json=payload,
                                    timeout=aiohttp.ClientTimeout(total=10)) as reply:
                if reply.status < 300:
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        if attempt + 1 < WEBHOOK_ATTEMPTS:
            await asyncio.sleep(WEBHOOK_RETRY_S)
    log.warning("webhook %s for job %s failed %d times; giving up", url, payload["id"],
                WEBHOOK_ATTEMPTS)


class LocalEndpoint:
    """The server, started and stopped from async code (the CLI, the demo, tests)."""

    def __init__(self, config: EndpointConfig, access_log: bool = False) -> None:
        self.config = config
        self.access_log = access_log  # every request (long-polls included): noisy
        self.app = build_app(config)
        self.state: EndpointState = self.app[STATE]
        self._runner: web.AppRunner | None = None
        self.root_url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 8000) -> str:
        """Listen; returns the root URL (clients use root_url + "/v2")."""
        access = logging.getLogger("aiohttp.access") if self.access_log else None
        self._runner = web.AppRunner(self.app, access_log=access, handle_signals=False,
                                     shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]  # the real one when port is 0
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.root_url = f"http://{shown}:{bound_port}"
        return self.root_url

    async def stop(self, reason: str = "the local endpoint shut down") -> None:
        self.state.store.shutdown(reason)
        self.state.closing = True
        self.state.store.signal.notify()  # open long-polls answer at once
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
