"""`serve(handler)`: run a handler as a Runpod serverless worker. handler.py's footer
calls it; it does, in order:

1. reads the settings and starts vLLM, before taking any job, so the first job does not
   pay for it; a bad setting or a model that cannot load ends the worker with a message;
   then leaves the start-up heap out of later garbage collections, as `vllm serve` does;
2. starts the watchdog: the worker exits non-zero soon after vLLM's engine dies, so
   Runpod replaces it instead of it failing every job it takes;
3. with HANDLER_RELOAD=true, watches the handler's file and serves each new version that
   loads, on the same engine (reload.py);
4. runs the runpod SDK's worker loop with the kit's job-fetch timing (worker_loop.py),
   the handler wrapped by jobs.py, and CONCURRENCY_MODIFIER jobs at once; with
   MODE_TO_RUN=lb, an HTTP server for a load-balancing endpoint instead (http_server.py);
5. after SIGTERM, drains the jobs in flight, stops vLLM in order, and exits 0.
"""

from __future__ import annotations

import gc
import importlib
import threading

from llmkit.runtime import kit_settings, reload, vllm_engine, watchdog
from llmkit.runtime.jobs import job_function
from llmkit.runtime.lifecycle import serve_or_die
from llmkit.runtime.worker_loop import install, quiet_sdk_logs


def serve(handler, *, chat_messages=None):
    """Run ``handler`` (an async generator function of a job) as the worker; never returns.

    ``chat_messages``: the handler's change to chat messages (messages -> messages),
    applied to the OpenAI route's chat requests too."""
    # The file as it is now, before vLLM's minute of start-up: a change meanwhile is a reload.
    served = reload.Served.of(handler, chat_messages)
    serve_or_die(lambda: _start(served))


def _start(served):
    if kit_settings.get("mode_to_run") == "lb":
        return _serve_http(served)
    quiet_sdk_logs()  # before runpod is imported: it reads the level then
    # Importing the runpod SDK takes a second or more (py-cpuinfo probes the CPU). Do it
    # while vLLM starts its engine, not before.
    threading.Thread(target=importlib.import_module, args=("runpod",), daemon=True).start()
    stopping = threading.Event()
    _start_engine(served, stopping)
    import runpod  # done by now; raises the real error if the import failed

    install(runpod)  # the kit's worker loop (WORKER_LOOP=sdk: the SDK's own)
    concurrency = vllm_engine.settings().kit.concurrency_modifier
    freeze_startup_heap()
    try:
        runpod.serverless.start({
            "handler": job_function(None, current=served.current),
            # Called on every job-fetch loop: how many jobs this worker runs at once.
            "concurrency_modifier": lambda current: concurrency,
            # The job's final output is the list of chunks it streamed.
            "return_aggregate_stream": True,
        })
    finally:
        stopping.set()  # a requested shutdown: vLLM stops its engine on purpose
    vllm_engine.shutdown_engine()  # drained after SIGTERM: stop vLLM in order, then exit


def _start_engine(served, stopping):
    """vLLM's engine, the watchdog that exits when it dies (unless ``stopping``), and with
    HANDLER_RELOAD the watcher of the handler's file: the same for both kinds of worker."""
    watchdog.exit_when_engine_dies(vllm_engine.engine(), stopping)
    if vllm_engine.settings().kit.handler_reload:
        reload.Watcher(served).start()


def freeze_startup_heap():
    """Leave what start-up made (torch, vLLM, the SDK: some 650,000 objects) out of every
    later garbage collection, as `vllm serve` does (vLLM's freeze_gc_heap). A full
    collection of that heap stops the worker's one event loop, which runs every job and
    vLLM's output handling, for about 0.35 s on a CPU; frozen, under a millisecond."""
    gc.collect()
    gc.freeze()


def _serve_http(served):
    """MODE_TO_RUN=lb: the worker is an HTTP server (http_server.py), for Runpod's
    load-balancing endpoints; the same handler, engine, watchdog and reloads."""
    from llmkit.runtime import http_server

    stopping = threading.Event()

    def start_engine():
        _start_engine(served, stopping)
        freeze_startup_heap()

    try:
        http_server.run(served, start_engine)
    finally:
        stopping.set()
    vllm_engine.shutdown_engine()
