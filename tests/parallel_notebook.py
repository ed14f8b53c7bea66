"""Run by test_parallel.py in a process of its own, as a notebook's cells would run:
`python parallel_notebook.py MODEL_DIR HANDLER` prints one JSON line, what each engine
showed. HANDLER: tests/handlers/plain.py, the default handler's shape."""

import asyncio
import json
import os
import runpy
import sys

from test_parallel import engine_processes, ranks, shared_memory

from llmkit.notebook import setup
from llmkit.runtime import engine, restart_engine, run_job, shutdown_engine

JOB = {"prompt": "The quick brown", "sampling_params": {"max_tokens": 8, "temperature": 0}}


def seen(before=()) -> dict:
    """This process's engine: its ranks, its processes, the shared memory they map, and
    which of ``before`` (an earlier engine's segments) still exist, not mapped by it."""
    pids = engine_processes(os.getpid())
    mapped = shared_memory(pids)  # a new engine may reuse a name (vLLM's all-reduce's)
    return {"ranks": sorted(ranks(os.getpid()).values()), "pids": pids,
            "segments": sorted(mapped),
            "existing": sorted(s for s in before if os.path.exists(s) and s not in mapped)}


def text() -> str:
    handler = runpy.run_path(sys.argv[2])["handler"]  # not as __main__: serve() stays off
    return "".join(chunk.get("text", "") for chunk in asyncio.run(run_job(handler, JOB)))


if __name__ == "__main__":
    setup(sys.argv[1], max_model_len=2048, tensor_parallel_size=2)
    engine()
    tensor = {**seen(), "text": text()}
    setup(sys.argv[1], tensor_parallel_size=1, data_parallel_size=2)
    restart_engine()
    binding = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")
    data = {**seen(tensor["segments"]), "text": text(), "cores": len(binding.split("|"))}
    shutdown_engine()
    end = seen(tensor["segments"] + data["segments"])
    print(json.dumps([tensor, data, end]))
