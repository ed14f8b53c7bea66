"""What a client sees when a job fails: one line, never a traceback or a path."""

from __future__ import annotations

import sys
import traceback

from llmkit.runtime.vllm_api import GracefulHTTPError


def log_unexpected(job_id, err):
    """Log ``err`` with its traceback and the job's id; return the client's one line."""
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    print(f"job {job_id} failed unexpectedly:\n{trace}", file=sys.stderr, flush=True)
    if isinstance(err, GracefulHTTPError):  # e.g. vLLM's queue is full: its own message
        from llmkit.runtime.sampling import vllm_error_message
        return f"job {job_id}: {vllm_error_message(err, 'engine')}"
    return f"job {job_id} failed with an internal error; the worker's log has the details"
