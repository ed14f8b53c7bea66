"""Load the exported handler.py as a module, the way tests and tools call it in-process."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


def load(path: str | Path, name: str = "exported_handler") -> ModuleType:
    """Import ``path`` under ``name``. Importing starts no engine: the handler does that."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make export-handler` first")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def running(path: str | Path, name: str, **env: str) -> Iterator[ModuleType]:
    """``path`` imported with ``env`` set while it reads its settings, its engine started,
    and ``module.run(coro)`` to drive the handler; the engine is shut down on exit."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        module = load(path, name)
    finally:  # the settings are read at import: the rest of the process keeps its own
        os.environ.clear()
        os.environ.update(saved)
    runner = asyncio.Runner()
    module.load_engine()
    module.run = runner.run
    try:
        yield module
    finally:
        module._engine.shutdown()
        runner.close()


async def collect(module: ModuleType, job_input, job_id: str = "job") -> list:
    """Every chunk the handler yields for one job, as the worker would see them."""
    return [chunk async for chunk in module.handler({"id": job_id, "input": job_input})]
