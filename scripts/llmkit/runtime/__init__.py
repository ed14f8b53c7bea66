"""The kit's runtime: everything a handler needs, so that a handler is a short function.

    from llmkit.runtime import InputError, generate, read_input

    async def handler(job):
        request = read_input(job)          # prompt or messages, answerType, sampling_params
        async for text in generate(request):
            yield {"text": text, **text.final}  # the last piece: usage, finish_reason

The public API:
  read_input(job, fields=None) -> Request   check the input; `fields` adds the handler's own
  Request                                   prompt | messages, stream, sampling, lora, extra,
                                            job_id
  generate(request)                         vLLM's answer: text pieces (stream) or the whole;
                                            the last piece's .final: usage, finish_reason
  InputError                                raise it to fail a job with your own message
  run_job(handler, input), stream_job(...)  one job, exactly as the worker runs it: its
                                            chunks, all (await) or as they come (async for)
  engine(), restart_engine(), shutdown_engine(), settings()
                                            vLLM's engine: one per process, started on first use
  serve(handler, chat_messages=None)
                                            the worker: handler.py's footer calls it
  API_VERSION                               this runtime's API; handler.py states the one it needs

The modules, each read in one sitting: vllm_api.py (the one module that imports vLLM: each
name the kit takes from it, and why), kit_settings.py (the kit's own settings, each
declared once), config.py (the environment's settings, vLLM's by its parser), vllm_engine.py
(vLLM's engine and its lifetime), inputs.py and sampling.py (input checks, vLLM's
SamplingParams), generation.py (cancellation, abort, stream batching), vllm_app.py (`vllm
serve`'s own app, in process), openai_route.py (queue jobs for its routes), errors.py
(every error the kit raises), jobs.py and error_shapes.py (what a client sees), worker.py
and worker_loop.py (the runpod worker and its job loop), lifecycle.py (heartbeat pings; a
worker that must die, dies), http_server.py (the load-balancing worker, MODE_TO_RUN=lb),
reload.py (a new handler.py without a restart), model_cache.py (MODEL=org/name from
Runpod's model cache), logs.py (the kit's log lines, with the job's id; LOG_LEVEL).
"""

import importlib

# Where each public name lives. They load on first use, so that worker_loop.py,
# lifecycle.py, errors.py and versions.py import without vLLM (the local endpoint's toy
# workers, the fast tests).
_PUBLIC = {
    "engine": "vllm_engine", "restart_engine": "vllm_engine", "settings": "vllm_engine",
    "shutdown_engine": "vllm_engine", "generate": "generation", "InputError": "errors",
    "Request": "inputs", "read_input": "inputs", "run_job": "jobs", "stream_job": "jobs",
    "serve": "worker", "API_VERSION": "versions",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'llmkit.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llmkit.runtime.{_PUBLIC[name]}"), name)
