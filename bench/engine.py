"""The exported handler's engine in this process: raw vLLM and the handler, side by side.

``build/handler.py`` is imported, ``load_engine()`` starts vLLM from its
``ENGINE_ARGS``, and "raw vLLM" means calling that same engine's ``generate()``
directly, with the ``SamplingParams`` the handler itself builds (same output kind,
same tokens). So the only difference between the raw and handler columns is the
handler's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

from bench.runner import HANDLER
from bench.workload import JobStats, now, post_bytes


class InProcess:
    """build/handler.py imported in this process; its engine started by load_engine()."""

    def __init__(self, handler_path: Path = HANDLER, name: str = "bench_handler") -> None:
        from llmkit import handler_module

        self.h = handler_module.load(handler_path, name)
        t0 = now()
        self.engine = self.h.load_engine()
        self.start_s = now() - t0
        self.limit = self.engine.model_config.max_model_len

    def prepare(self, inp: dict):
        """What the handler would pass to vLLM for this input: token ids and params."""
        source, stream, samp = self.h.parse_input(inp)
        ids = self.h.tokenize(self.engine, source)
        return ids, self.h.sampling_params(samp, len(ids), self.limit, stream)

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
        async for chunk in self.h.handler(job):
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
        with contextlib.suppress(Exception):
            self.engine.shutdown()
