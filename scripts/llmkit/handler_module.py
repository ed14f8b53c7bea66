"""Load a handler.py as a module, and run its jobs in-process as the worker would:
the tests' and benchmarks' way in."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

MISSING_EXIT = 2  # like a usage error: nothing ran


def missing(path: str | Path) -> str | None:
    """Why ``path`` cannot be a handler, or None: the one message for every entry point."""
    if not Path(path).is_file():
        return f"{path} does not exist: run `make export-handler` first"
    return None


def load(path: str | Path, name: str = "exported_handler") -> ModuleType:
    """Import ``path`` under ``name``. Importing starts no engine: the runtime does that."""
    path = Path(path)
    problem = missing(path)
    if problem:
        raise FileNotFoundError(problem)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def running(path: str | Path, name: str, **env: str) -> Iterator[ModuleType]:
    """``path`` imported, and the runtime's engine (re)started with ``env`` set while it
    reads its settings; ``module.run(coro)`` drives jobs on the engine's event loop and
    ``module.job`` is the function the worker calls. The engine is shut down on exit."""
    from llmkit.runtime import vllm_engine
    from llmkit.runtime.jobs import job_function

    module = load(path, name)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        vllm_engine.restart_engine()
    finally:  # the settings are read at start: the rest of the process keeps its own
        os.environ.clear()
        os.environ.update(saved)
    runner = asyncio.Runner()
    module.run = runner.run
    module.job = job_function(module.handler, getattr(module, "chat_messages", None))
    try:
        yield module
    finally:
        vllm_engine.shutdown_engine()
        runner.close()


async def collect(module: ModuleType, job_input, job_id: str = "job") -> list:
    """Every chunk one job yields, as the worker would see them."""
    return [chunk async for chunk in module.job({"id": job_id, "input": job_input})]
