"""The kit's errors, each with what it means, and what a client sees when a job fails.

Two kinds:

* a start-up error (StartupError and its kinds) stops the worker before any job: the
  worker reports itself unhealthy and exits with the message alone, no traceback (the
  notebook shows the message alone too);
* an error in a job fails that job only: InputError's message goes to the client as it
  is; anything unexpected is logged with its traceback, and the client gets one line
  that names the job (`log_unexpected`). The worker goes on.

The standard library only: the toy workers and the fast tests import it without vLLM.
"""

from __future__ import annotations

import traceback


class StartupError(RuntimeError):
    """A start-up failure explained by its message: no traceback needed."""

    def _render_traceback_(self):
        # IPython's hook: in the notebook, the message alone, not the kit's frames.
        return [f"{type(self).__name__}: {self}"]


class SettingsError(StartupError):
    """A setting the worker cannot start with; the message names the variable."""


class CachedModelMissing(StartupError):
    """MODEL (at MODEL_REVISION) is not in the model cache; the message says where it looked."""


class VLLMUnsupported(StartupError):
    """The installed vLLM lacks a touchpoint: the message names its version and ours."""


class UnknownSDK(StartupError):
    """The installed runpod SDK is not the one the kit's worker loop was written for."""


class ModelError(StartupError):
    """A model could not be found or read (llmkit.models: the notebook, the image's build);
    the message says what was looked for."""


class InputError(ValueError):
    """Bad job input. Raise it with a message naming the field: the client gets that
    message as the job's error, and the worker goes on."""


class ReloadError(Exception):
    """Why a new handler.py cannot serve; the message names the file and the line. The
    handler that served before goes on serving."""


def log_unexpected(job_id, err):
    """Log ``err`` with its traceback and the job's id; return the client's one line."""
    from llmkit.runtime.vllm_api import GracefulHTTPError

    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    from llmkit.runtime import logs  # logs.py imports this module

    logs.get("jobs").error(f"job {job_id} failed unexpectedly:\n{trace}")
    if isinstance(err, GracefulHTTPError):  # e.g. vLLM's queue is full: its own message
        from llmkit.runtime.sampling import vllm_error_message
        return f"job {job_id}: {vllm_error_message(err, 'engine')}"
    return f"job {job_id} failed with an internal error; the worker's log has the details"
