"""vLLM's engine and its lifetime: one per process, however often a notebook runs its cells.

The engine lives here, in the runtime's module, not in the notebook: re-running a cell,
or Run All twice, finds the running engine instead of starting a second one beside it.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time

from llmkit.runtime import config, logs, watchdog
from llmkit.runtime.config import Settings, vllm_message
from llmkit.runtime.errors import SettingsError
from llmkit.runtime.vllm_api import AsyncEngineArgs, AsyncLLMEngine

log = logs.get("engine")

_engine = None
_settings: Settings | None = None
_lock = threading.Lock()


def engine():
    """The running engine; the first call starts it with the environment's settings."""
    global _engine, _settings
    with _lock:
        if _engine is None:
            wanted = config.load()
            if not wanted.model:
                raise SettingsError("MODEL is not set: point it at a model folder or a baked "
                                    "model")
            config.cpu_environment(ranks=config.local_ranks(wanted.serve_args))
            try:
                _engine = AsyncLLMEngine.from_engine_args(
                    AsyncEngineArgs.from_cli_args(wanted.serve_args))
            except (ValueError, TypeError) as err:  # vLLM's checks of the settings together
                raise SettingsError(f"vLLM refused the settings {wanted.describe()}: "
                                    f"{vllm_message(err)}") from None
            _settings = wanted
        return _engine


def settings() -> Settings:
    """The running engine's settings; before it starts, the environment's."""
    return _settings if _settings is not None else config.load()


def running() -> bool:
    return _engine is not None


def shutdown_engine():
    """Stop the engine, if one runs, and wait until its processes and memory are gone."""
    global _engine, _settings
    with _lock:
        if _engine is None:
            return
        started = time.monotonic()
        engine_processes = watchdog.EngineProcesses()  # what a clean stop must leave gone
        try:
            _engine.shutdown()
        except Exception as error:  # going anyway: say so
            log.warning(f"vLLM's engine did not shut down cleanly: "
                        f"{type(error).__name__}: {error}")
        _engine = _settings = None
        multiprocessing.active_children()  # reaps its ended processes (a notebook lives on)
        # vLLM kills a process that is slow to stop (5 s, on a busy machine), which then
        # cannot unlink its shared memory: the next engine must not start beside it.
        engine_processes.clean_up()
        gc.collect()  # the front end's share: the tokenizer, the processors
        log.info(f"vLLM's engine shut down in {time.monotonic() - started:.1f} s")


def restart_engine():
    """Apply changed settings: stop the running engine first, then start a new one."""
    shutdown_engine()
    return engine()
