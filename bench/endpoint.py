"""The local endpoint for the benchmarks: started by the kit's harness
(llmkit.endpoint.harness), with an async client that times each job as a user sees it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import aiohttp

from bench.workload import JobStats, now, post_bytes
from llmkit.endpoint.harness import WORKERS_TIMEOUT_S, EndpointError, EndpointProcess
from llmkit.endpoint.jobs import FINAL
from llmkit.paths import HANDLER_PATH as HANDLER


class BenchEndpoint:
    """`python -m llmkit.endpoint` with SDK workers running handler.py in production."""

    def __init__(self, concurrency: int, log_dir: Path, handler_path: Path = HANDLER,
                 workers: int = 1, env: dict[str, str] | None = None,
                 name: str = "endpoint") -> None:
        self.concurrency, self.workers = concurrency, workers
        # env: for the endpoint and its workers, e.g. WORKER_LOOP=sdk
        tag = "".join(f"-{k.lower()}-{v.lower()}" for k, v in sorted((env or {}).items()))
        self.process = EndpointProcess(
            workers=workers, concurrency=concurrency, handler=handler_path,
            model=os.environ["MODEL"], endpoint_id="bench", env=env,
            log_path=log_dir / f"{name}-c{concurrency}-w{workers}{tag}.log")
        self.log_path = self.process.log_path
        self.session: aiohttp.ClientSession | None = None
        self.start_s = 0.0

    def launch(self) -> None:
        """Spawn the endpoint and its workers; start() then waits for them."""
        self.process.launch()

    async def start(self, timeout: float = WORKERS_TIMEOUT_S) -> BenchEndpoint:
        try:
            self.process.launch()
            self.process.wait_listening()
            if self.workers:
                self.process.wait_workers(self.workers, timeout)
        except BaseException:
            self.process.stop()
            raise
        self.start_s = time.monotonic() - self.process.started_at
        self.session = aiohttp.ClientSession(headers=self.process.headers,
                                             timeout=aiohttp.ClientTimeout(total=None))
        return self

    @property
    def url(self) -> str:
        return self.process.url

    def log_mark(self) -> int:
        return self.log_path.stat().st_size

    async def stream_job(self, inp: dict) -> JobStats:
        """Submit with /run and read /stream until the job is final, as a client does."""
        st = JobStats(start=now())
        async with self.session.post(f"{self.url}/run", json={"input": inp}) as r:
            body = await r.json()
            if r.status != 200:
                raise EndpointError(f"/run answered {r.status}: {body}")
        job_id = st.job_id = body["id"]
        while True:
            async with self.session.get(f"{self.url}/stream/{job_id}") as r:
                body = await r.json()
            t = now()
            for item in body.get("stream", []):
                chunk = item["output"]
                if st.first is None:
                    st.first = t
                st.chunks += 1
                st.bytes += post_bytes(chunk)
                st.chunk_times.append(t)
                st.texts.append(chunk.get("text", ""))
            status = body.get("status")
            if status in FINAL:
                break
        st.end = now()
        if status != "COMPLETED":
            raise EndpointError(f"job {job_id} ended {status}: {body}")
        st.tokens = inp["sampling_params"]["max_tokens"]
        return st

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        self.process.stop()
