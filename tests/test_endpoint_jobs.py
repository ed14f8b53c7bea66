"""The job store on its own (no HTTP, no worker): the state rules the routes rely on."""

from __future__ import annotations

import asyncio

from llmkit.endpoint.jobs import IN_PROGRESS, TIMED_OUT, JobStore


def test_a_retried_job_does_not_inherit_the_stop_of_its_timed_out_run():
    async def scenario():
        store = JobStore(execution_timeout_s=0.01)
        job = store.submit({"prompt": "hi"}, sync=False)
        assert store.take("worker-1", 1) == [job]
        await asyncio.sleep(0.1)  # the execution timeout strikes: the worker must stop it
        assert job.status == TIMED_OUT and store.has_stops("worker-1")
        # The worker has not polled job-stop yet when the client retries the job...
        store.retry(job)
        # ...and the same worker takes the new run of it.
        assert store.take("worker-1", 1) == [job]
        assert job.status == IN_PROGRESS
        assert store.pop_stops("worker-1") == [], "the retried job would be stopped at once"

    asyncio.run(scenario())


def test_a_stop_for_a_job_that_is_not_retried_is_still_delivered():
    async def scenario():
        store = JobStore(execution_timeout_s=0.01)
        old, other = (store.submit({"p": i}, sync=False) for i in range(2))
        store.take("worker-1", 2)
        await asyncio.sleep(0.1)  # both time out
        store.retry(old)
        assert store.pop_stops("worker-1") == [other.id]

    asyncio.run(scenario())
