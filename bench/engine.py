"""The runtime's engine in this process: raw vLLM and the exported handler, side by side.

``build/handler.py`` is imported, the kit's runtime starts vLLM from the environment's
settings, and "raw vLLM" means calling that same engine's ``generate()`` directly, with
the ``SamplingParams`` the runtime itself builds (same output kind, same tokens). So the
only difference between the raw and handler columns is the handler's and runtime's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

from bench.workload import JobStats, now, post_bytes
from llmkit.paths import HANDLER_PATH as HANDLER


class InProcess:
    """build/handler.py imported in this process; the runtime's engine started."""

    def __init__(self, handler_path: Path = HANDLER, name: str = "bench_handler") -> None:
        from llmkit import handler_module
        from llmkit.runtime import vllm_engine
        from llmkit.runtime.jobs import job_function

        self.h = handler_module.load(handler_path, name)
        self.job = job_function(self.h.handler, getattr(self.h, "chat_messages", None))
        t0 = now()
        self.engine = vllm_engine.engine()
        self.start_s = now() - t0
        self.settings = vllm_engine.settings()
        self.limit = self.engine.model_config.max_model_len

    def prepare(self, inp: dict):
        """What the runtime would pass to vLLM for this input: token ids and params."""
        from llmkit.runtime import inputs, sampling

        request = inputs.read_input({"input": inp})
        ids = sampling.prompt_token_ids(self.engine, request.prompt, request.messages)
        return ids, sampling.sampling_params(request.sampling, len(ids), self.limit,
                                             request.stream, self.settings.kit.default_max_tokens)

    async def raw_job(self, inp: dict, prepared=None) -> JobStats:
        """vLLM's engine called directly; token ids and params prepared beforehand."""
        ids, params = prepared or self.prepare(inp)
        st = JobStats(start=now())
        async for out in self.engine.generate({"prompt_token_ids": ids}, params,
                                              f"raw-{uuid.uuid4().hex[:12]}"):
            c = out.outputs[0]
            n = len(c.token_ids)
            if n or c.text:
                t = now()
                if st.first is None:
                    st.first = t
                st.chunks += 1
                st.tokens += n
                st.chunk_times.append(t)
                st.chunk_tokens.append(n)
                st.texts.append(c.text)
        st.end = now()
        return st

    async def handler_job(self, inp: dict, job_id: str | None = None,
                          consumer_delay: float = 0.0) -> JobStats:
        """The exported handler, consumed like the SDK does (optionally slow: a post)."""
        st = JobStats(start=now())
        job = {"id": job_id or f"job-{uuid.uuid4().hex[:12]}", "input": inp}
        async for chunk in self.job(job):
            t = now()
            if "error" in chunk:
                raise RuntimeError(f"handler failed: {chunk['error']}")
            if st.first is None:
                st.first = t
            st.chunks += 1
            st.bytes += post_bytes(chunk)
            st.chunk_times.append(t)
            st.texts.append(chunk["text"])
            if consumer_delay:
                await asyncio.sleep(consumer_delay)
        st.end = now()
        st.tokens = inp["sampling_params"]["max_tokens"]  # min = max: exact
        return st

    def close(self) -> None:
        from llmkit.runtime import vllm_engine

        with contextlib.suppress(Exception):
            vllm_engine.shutdown_engine()
