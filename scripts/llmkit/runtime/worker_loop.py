"""The kit's worker loop: the runpod SDK's production loop, with its timing fixed.

In runpod 1.10.0 (and 1.12) `JobScaler` (serverless/modules/rp_scale.py) decides when
to fetch a job in `get_jobs`: when it thinks the worker is full it sleeps a fixed
second. It thinks so too often, because a job it has taken counts twice (in its queue
and in its in-progress set) until the job starts. And `run_jobs` looks for fetched jobs
only every 0.1 s. So a queued job waits up to 1.1 s after a slot frees.
`kit_job_scaler` changes only those decisions:

* a taken job counts once (`current_occupancy`);
* a full worker fetches as soon as a job ends, not on the next 1 s tick (`set_scale`,
  the first await of every `get_jobs` round, returns when there is room);
* a fetched job starts at once, not on `run_jobs`' next 0.1 s tick;
* on SIGTERM the open job-take and job-stop long-polls are cut short (they hold no job
  yet), instead of the SDK waiting for each to time out before it exits.

Everything else is the SDK's own: the job-take and batch requests, the back-off when
the queue is empty or down, per-job stop, the heartbeat, the SIGTERM drain.
`WORKER_LOOP=sdk` runs the SDK's loop unchanged. docs/WORKER_LOOP.md has the details.

Also here: the SDK logs at INFO unless told otherwise (`quiet_sdk_logs`). How a worker
that must die, dies is lifecycle.py's.

The standard library only, with runpod passed in: tests and the local endpoint's
toy workers use it without vLLM.
"""

import asyncio
import contextlib
import inspect
import os

from llmkit.runtime import kit_settings, runpod_sdk, timeline
from llmkit.runtime.errors import UnknownSDK

# The SDK whose JobScaler internals the kit's loop was written against (runpod_sdk.py
# lists each internal the kit relies on, and the SDK versions it was read from).
RUNPOD_VERSION = runpod_sdk.PINNED

def quiet_sdk_logs():
    """INFO unless RUNPOD_DEBUG_LEVEL (or RUNPOD_LOG_LEVEL) says otherwise.

    The SDK defaults to DEBUG: a line per poll and three per streamed chunk. It reads
    the level when runpod is imported, so call this first.
    """
    os.environ.setdefault("RUNPOD_DEBUG_LEVEL", "INFO")


def check_sdk(runpod):
    """Raise UnknownSDK unless runpod's loop internals are the ones kit_job_scaler expects."""
    from runpod.serverless import worker
    from runpod.serverless.modules import rp_scale

    problems = []
    version = getattr(runpod, "__version__", "unknown")
    if version != RUNPOD_VERSION:
        problems.append(f"runpod is {version}, not {RUNPOD_VERSION}")
    scaler = getattr(rp_scale, "JobScaler", None)
    for name, params in runpod_sdk.SCALER_METHODS.items():
        method = getattr(scaler, name, None)
        if not callable(method):
            problems.append(f"JobScaler.{name} is missing")
        elif tuple(inspect.signature(method).parameters) != params:
            problems.append(f"JobScaler.{name}{inspect.signature(method)} is not "
                            f"{name}({', '.join(params)})")
    owners = {"JobScaler": scaler, "worker": worker}
    for where, names in runpod_sdk.SCALER_USES.items():
        owner, attribute = where.split(".")
        code = getattr(getattr(owners[owner], attribute, None), "__code__", None)
        missing = [n for n in names if code is None or n not in code.co_names]
        if missing:
            problems.append(f"{where} no longer uses {', '.join(missing)}")
    if problems:
        raise UnknownSDK(
            f"the kit's worker loop was written for runpod=={RUNPOD_VERSION} and does not "
            f"recognise this SDK ({'; '.join(problems)}). Install runpod=={RUNPOD_VERSION} "
            f"(the kit's pin), or set WORKER_LOOP=sdk to run the SDK's own loop.")


def kit_job_scaler(base):
    """A subclass of the SDK's JobScaler (``base``) that fetches a job when a slot frees."""
    from runpod.serverless.modules.rp_scale import log

    class KitJobScaler(base):
        """JobScaler that counts a taken job once, fetches when a job ends, starts at once."""

        def __init__(self, config):
            super().__init__(config)
            self._job_ended = asyncio.Event()
            self._taking = True  # get_jobs runs: it may still queue a job it took
            if timeline.enable():  # WORKER_LOOP_TRACE
                self.jobs_fetcher = _traced_fetcher(self.jobs_fetcher)
                _trace_posts()
            self.jobs_fetcher = self._until_shutdown(self.jobs_fetcher)
            self.stop_signals_fetcher = self._until_shutdown(self.stop_signals_fetcher)

        def _until_shutdown(self, fetch):
            """``fetch`` (a queue long-poll), cut short when the worker is told to stop.

            A cut poll raises TimeoutError, which both SDK loops take as "nothing came,
            look again", and then they see the worker is stopping. Hanging up hands
            nothing out: the queue keeps what it had not yet sent.
            """
            async def fetch_or_stop(*args):
                if not self.is_alive():
                    raise asyncio.TimeoutError
                fetching = asyncio.ensure_future(fetch(*args))
                stopping = asyncio.ensure_future(self._shutdown_event.wait())
                try:
                    await asyncio.wait({fetching, stopping},
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                if not fetching.done():
                    fetching.cancel()
                    raise asyncio.TimeoutError
                return fetching.result()  # a reply that beat the stop is used
            return fetch_or_stop

        def kill_worker(self):
            # SIGTERM (the SDK's handler): stop fetching, drain what runs, exit.
            super().kill_worker()
            self._job_ended.set()  # wakes set_scale if it waits for a free slot

        async def get_jobs(self, session):
            try:
                await super().get_jobs(session)
            finally:
                self._taking = False

        def current_occupancy(self):
            # job_progress holds every job from its take to its end; the SDK added
            # the queue on top, counting a taken job twice until it started.
            count = self.job_progress.get_job_count()
            log.debug(f"JobScaler.status | concurrency: {self.current_concurrency}; "
                      f"queue: {self.jobs_queue.qsize()}; jobs: {count}")
            return count

        async def set_scale(self):
            # The first await of each get_jobs round. While the worker is full, wait
            # for a job to end instead of get_jobs' fixed 1 s sleep. The 1 s timeout
            # keeps the SDK's pace for a new concurrency value and for shutdown.
            await super().set_scale()
            while self.is_alive() and self.current_occupancy() >= self.current_concurrency:
                self._job_ended.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._job_ended.wait(), 1.0)
                await super().set_scale()

        async def handle_job(self, session, job):
            try:
                await super().handle_job(session, job)
            finally:
                self._job_ended.set()  # after the SDK's own clean-up: the slot is free
                timeline.event("ended", job["id"])

        async def run_jobs(self, session):
            # The SDK's run_jobs, woken by a queued job instead of a 0.1 s tick. The
            # 0.1 s timeout remains only to notice shutdown, as in the SDK.
            tasks = set()
            last_count = 0
            # Until get_jobs ends: a job it took just before a SIGTERM is still run.
            while self.is_alive() or self._taking or not self.jobs_queue.empty():
                while len(tasks) < self.current_concurrency and not self.jobs_queue.empty():
                    tasks.add(self._start_job(session, self.jobs_queue.get_nowait()))
                if tasks and len(tasks) != last_count:
                    log.info(f"Jobs in progress: {len(tasks)}")
                    last_count = len(tasks)
                waiting = set(tasks)
                queued = None
                if len(tasks) < self.current_concurrency:
                    queued = asyncio.ensure_future(self.jobs_queue.get())
                    waiting.add(queued)
                done, _ = await asyncio.wait(waiting, timeout=0.1,
                                             return_when=asyncio.FIRST_COMPLETED)
                tasks -= done
                if queued is not None:
                    if queued.done():
                        tasks.add(self._start_job(session, queued.result()))
                    else:
                        queued.cancel()  # safe: a cancelled get() leaves the item queued
            # Drain as the SDK does: stopped jobs end cancelled, real errors are logged.
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(
                        result, asyncio.CancelledError):
                    log.error(f"JobScaler.run_jobs | Task failed during shutdown drain: "
                              f"{result}")

        def _start_job(self, session, job):
            timeline.event("started", job["id"])
            task = asyncio.create_task(self.handle_job(session, job))
            self.jobs_tasks[job["id"]] = task
            return task

    KitJobScaler.kit_loop = True
    return KitJobScaler


def _traced_fetcher(fetch):
    async def traced(session, count):
        timeline.event("fetch", count)
        jobs = await fetch(session, count)
        timeline.event("fetched", ",".join(job["id"] for job in jobs or ()))
        return jobs
    return traced


def _trace_posts():
    """Each stream post of the SDK's handle_job (rp_job.stream_result), timed."""
    from runpod.serverless.modules import rp_job

    post = rp_job.stream_result
    if getattr(post, "traced", False):
        return

    async def traced(session, output, job):
        timeline.event("post", job["id"])
        await post(session, output, job)
        timeline.event("posted", job["id"])

    traced.traced = True
    rp_job.stream_result = traced


def install(runpod):
    """Make runpod.serverless.start run the kit's loop; return "kit" or "sdk".

    Call before runpod.serverless.start. Raises UnknownSDK for an SDK whose internals
    differ, SettingsError for a bad WORKER_LOOP (kit_settings.py).
    """
    from runpod.serverless.modules import rp_scale

    choice = kit_settings.get("worker_loop")  # a SettingsError (a StartupError) if bad
    if choice == "kit" and not getattr(rp_scale.JobScaler, "kit_loop", False):
        check_sdk(runpod)
        # worker.run_worker builds rp_scale.JobScaler(config): this is the one change.
        rp_scale.JobScaler = kit_job_scaler(rp_scale.JobScaler)
    return choice
