"""vLLM's engine and its lifetime: one per process, however often a notebook runs its cells.

The engine lives here, in the runtime's module, not in the notebook: re-running a cell,
or Run All twice, finds the running engine instead of starting a second one beside it.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time

from llmkit.runtime import config, logs
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
            args = wanted.serve_args  # each tensor/pipeline-parallel rank gets its cores
            config.cpu_environment(ranks=args.tensor_parallel_size * args.pipeline_parallel_size)
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
        try:
            _engine.shutdown()
        except Exception as error:  # going anyway: say so
            log.warning(f"vLLM's engine did not shut down cleanly: "
                        f"{type(error).__name__}: {error}")
        _engine = _settings = None
        gc.collect()  # the front end's share: the tokenizer, the processors
        log.info(f"vLLM's engine shut down in {time.monotonic() - started:.1f} s")


def restart_engine():
    """Apply changed settings: stop the running engine first, then start a new one."""
    shutdown_engine()
    return engine()


def exit_when_engine_dies(stopping: threading.Event, interval=1.0):
    """Exit non-zero soon after vLLM's engine dies, so Runpod replaces this worker.

    Otherwise the worker would stay up, taking jobs and failing every one of them.
    ``stopping`` is set on a requested shutdown, when vLLM stops its engine on purpose.
    """
    watched = engine()
    # vLLM starts its engine processes with multiprocessing: kept here, their exit codes
    # say how the engine died (vLLM's own log does not).
    processes = multiprocessing.active_children()

    def watch():
        while not watched.errored:
            time.sleep(interval)
        if stopping.is_set():
            return
        log.error(f"vLLM engine died{how_it_died(processes)}: exiting so the platform "
                  "replaces this worker")
        time.sleep(2 * interval)  # let the failed job's result go out first
        os._exit(1)

    threading.Thread(target=watch, name="engine-watchdog", daemon=True).start()


def how_it_died(processes) -> str:
    """" (EngineCore_DP0 was killed by SIGKILL ...)" for the engine processes that ended
    with an error; "" when none did (vLLM's own loop in this process failed)."""
    ends = []
    for process in processes:
        process.join(timeout=0.5)  # a process vLLM has not waited for yet
        code = process.exitcode
        if code is None or code == 0:
            continue
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            hint = (": out of memory? The kernel's OOM killer sends SIGKILL"
                    if code == -signal.SIGKILL else "")
            ends.append(f"{process.name} was killed by {name}{hint}")
        else:
            ends.append(f"{process.name} exited with code {code}")
    return f" ({'; '.join(ends)})" if ends else ""
