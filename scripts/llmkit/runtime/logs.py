"""The runtime's logs: `logging`, in the runpod SDK's own line format, with the job's id.

Every line the kit writes goes through the ``llmkit`` logger, so an operator reads one
format beside the SDK's lines:
  - on Runpod (RUNPOD_ENDPOINT_ID is set), a JSON line as the SDK writes it:
    {"requestId": "<job id or null>", "message": "...", "level": "INFO"},
    which Runpod's log view files under the job;
  - elsewhere, ``INFO   | <job id> | message`` (the job's part only within a job).

LOG_LEVEL (DEBUG, INFO, WARNING, ERROR; default INFO) sets the level. It leaves vLLM's own
logging as vLLM configures it, and the SDK's too (RUNPOD_DEBUG_LEVEL). A line written while
a job runs (in its task) carries the job's id: `job_context(job_id)` sets it. No prompt text
or secret is logged at INFO.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys

from llmkit.runtime import kit_settings
from llmkit.runtime.errors import SettingsError

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("llmkit_job_id",
                                                                     default=None)


def get(name: str) -> logging.Logger:
    """The logger of one part of the runtime (``llmkit.<name>``), set up on first use."""
    setup()
    return logging.getLogger(f"llmkit.{name}")


@contextlib.contextmanager
def job_context(job_id):
    """Lines logged within (in this task and the tasks it starts) carry ``job_id``."""
    previous = _job_id.get()
    _job_id.set(None if job_id is None else str(job_id))
    try:
        yield
    finally:  # set, not reset: an async generator may end in another context
        _job_id.set(previous)


def level(environ=None) -> int:
    """LOG_LEVEL's level; a SettingsError names a bad value."""
    return getattr(logging, kit_settings.get("log_level", environ))


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        job_id = _job_id.get()
        name = "WARN" if record.levelname == "WARNING" else record.levelname
        if os.environ.get("RUNPOD_ENDPOINT_ID"):  # as the SDK logs on Runpod
            return json.dumps({"requestId": job_id, "message": message, "level": name},
                              ensure_ascii=False)
        return f"{name.ljust(7)}| {job_id} | {message}" if job_id else \
            f"{name.ljust(7)}| {message}"


class _Stderr(logging.StreamHandler):
    """stderr as it is at each line: a notebook or a test may have replaced it."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup() -> None:
    """The ``llmkit`` logger's handler and level, once; the root logger is left alone."""
    root = logging.getLogger("llmkit")
    if any(isinstance(h, _Stderr) for h in root.handlers):
        return
    handler = _Stderr()
    handler.setFormatter(_Format())
    root.addHandler(handler)
    root.propagate = False  # one line per message, whatever else configured the root
    try:
        root.setLevel(level())
    except SettingsError as err:  # still INFO, and said once
        root.setLevel(logging.INFO)
        root.warning("%s; logging at INFO", err)
