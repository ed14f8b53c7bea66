"""The function the worker loop calls for each job: the user's handler, wrapped.

* OpenAI jobs (`openai_route` in the input) go to the OpenAI route, the rest to the
  handler;
* an InputError becomes one `{"error": message}` chunk, which fails the job, and one log
  line with the job's id and that message (the field at fault: the kit's messages quote no
  prompt text);
* any other error is logged with its traceback, and the client gets one line;
* the worker goes on either way.
"""

from __future__ import annotations

from llmkit.runtime import logs
from llmkit.runtime.error_shapes import openai_error
from llmkit.runtime.errors import InputError, log_unexpected
from llmkit.runtime.openai_route import is_openai_job, openai_job

log = logs.get("jobs")


def job_function(handler, chat_messages=None, *, current=None):
    """An async generator function of one job, as runpod.serverless.start takes it.

    ``current``: instead of a fixed handler, a function that returns (handler,
    chat_messages) at each job's start (a worker that reloads its handler)."""
    current = current or (lambda: (handler, chat_messages))

    async def run(job):
        job_id = str(job.get("id", "job"))
        job_input = job.get("input")
        openai = is_openai_job(job_input)
        handler, chat_messages = current()  # this job's, to its end: a reload swaps later ones
        with logs.job_context(job_id):  # the job's id on each line logged while it runs
            try:
                chunks = openai_job(job_input, job_id, chat_messages) if openai else handler(job)
                async for chunk in chunks:
                    yield chunk
            except Exception as err:  # never a traceback or a path to the client
                yield failure(err, job_id, openai)[0]
    return run


def failure(err, job_id, openai=False):
    """(the one chunk that fails a job on ``err``, its HTTP status): 400 for an InputError,
    the input's fault; 500 for anything else, logged with its traceback."""
    if isinstance(err, InputError):
        log.info(f"failed on its input: {str(err):.300}")  # the job's id: logs.job_context
        return (openai_error(400, str(err)) if openai else {"error": str(err)}), 400
    message = log_unexpected(job_id, err)
    return (openai_error(500, message, "InternalServerError") if openai
            else {"error": message}), 500


async def stream_job(handler, job_input, job_id="try", chat_messages=None):
    """The chunks of one job as they come, exactly as the worker would run it."""
    async for chunk in job_function(handler, chat_messages)({"id": job_id, "input": job_input}):
        yield chunk


async def run_job(handler, job_input, job_id="try", chat_messages=None):
    """Every chunk of one job, exactly as the worker would run it (in a notebook:
    `await run_job(handler, {"prompt": "Hi"})`)."""
    return [chunk async for chunk in stream_job(handler, job_input, job_id, chat_messages)]
