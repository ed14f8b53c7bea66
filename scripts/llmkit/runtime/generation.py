"""`generate(request)`: vLLM's answer as text, with the job's lifetime handled.

* Stream mode yields the text as it comes, batched (the first piece at once, then at
  most one chunk per STREAM_INTERVAL_MS, the gap doubling up to STREAM_INTERVAL_MAX_MS);
  normal mode yields the whole answer once.
* A job that is cancelled or times out aborts its vLLM request, wherever its task was
  stopped: no engine time is spent on an answer nobody reads.
* A request vLLM refuses becomes an InputError naming the field.
* `request.lora` picks one of the LoRA adapters LORA_MODULES names, the very adapter the
  OpenAI route serves under that name.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from llmkit.runtime import vllm_app, vllm_engine
from llmkit.runtime.errors import InputError
from llmkit.runtime.inputs import Request
from llmkit.runtime.sampling import (
    PROCESSOR_CHECKS,
    prompt_token_ids,
    sampling_params,
    vllm_error_message,
)
from llmkit.runtime.vllm_api import EngineGenerateError, VLLMClientError

_aborts = set()  # abort tasks in flight (the event loop keeps only weak references)


async def generate(request: Request):
    """Yield the answer's text for ``request``: pieces (stream) or the whole (normal)."""
    engine = vllm_engine.engine()
    settings = vllm_engine.settings()
    ids = prompt_token_ids(engine, request.prompt, request.messages)
    params = sampling_params(request.sampling, len(ids), engine.model_config.max_model_len,
                             request.stream, settings.default_max_tokens)
    adapter = await lora_request(request.lora) if request.lora else None
    request_id = f"{request.job_id}-{uuid.uuid4().hex[:8]}"
    done = tie_to_job(engine, request_id, request.job_id)
    lora = {"lora_request": adapter} if adapter else {}
    outputs = _vllm_outputs(engine.generate({"prompt_token_ids": ids}, params, request_id, **lora),
                            [f for f in PROCESSOR_CHECKS if f in request.sampling])
    if request.stream:
        async for text in gap_batched(((o.outputs[0].text, o.finished) async for o in outputs),
                                      settings, on_end=done):
            yield text
    else:
        final = None
        async for output in outputs:
            final = output
        done()
        yield final.outputs[0].text


async def lora_request(name):
    """vLLM's LoRARequest for the adapter ``name``, as its OpenAI layer holds it."""
    adapters = (await vllm_app.state()).openai_serving_models.lora_requests
    if name not in adapters:
        serves = f"this worker serves {', '.join(sorted(adapters))}" if adapters else \
            "this worker serves none: set ENABLE_LORA=true and LORA_MODULES=name=path"
        raise InputError(f"input.lora: no LoRA adapter named {name!r:.60}; {serves}")
    return adapters[name]


def tie_to_job(engine, request_id, job_id):
    """Abort the vLLM request(s) when the job's task ends cancelled before they finish.

    The SDK stops a cancelled or timed-out job by cancelling its asyncio task. If that
    lands at an await inside vLLM's generate(), vLLM aborts the request itself. But it
    often lands while the SDK posts a chunk, with the handler left suspended and vLLM
    still generating for nobody. Returns a function to call when the answer is complete.
    """
    state = {"finished": False}

    def abort_if_cancelled(task):
        if not task.cancelled():
            return
        if state["finished"]:  # stopped while its last chunk was being posted
            print(f"job {job_id} stopped: vLLM request {request_id} had already finished, "
                  f"nothing to abort", flush=True)
            return
        abort = asyncio.ensure_future(_abort(engine, request_id, job_id))
        _aborts.add(abort)
        abort.add_done_callback(_aborts.discard)

    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(abort_if_cancelled)
    return lambda: state.update(finished=True)


async def _abort(engine, request_id, job_id):
    # The OpenAI layer prefixes and splits ids (chatcmpl-ID, cmpl-ID-0): match them all.
    processor = getattr(engine, "output_processor", None)
    ids = [r for r in getattr(processor, "external_req_ids", ()) if request_id in r]
    await engine.abort(ids or request_id)  # a no-op if vLLM already aborted or finished
    running = processor.get_num_unfinished_requests() if processor is not None else "?"
    print(f"job {job_id} stopped: vLLM request {request_id} aborted "
          f"({running} request(s) still running)", flush=True)


async def gap_batched(pieces, settings, on_end=None):
    """Join (text, last?) pieces as they arrive: the first goes out at once; then a batch
    waits until the gap since the last one has passed, the gap doubling per batch from
    STREAM_INTERVAL_MS up to STREAM_INTERVAL_MAX_MS. vLLM merges DELTA outputs meanwhile."""
    pending, last_sent, gap = "", float("-inf"), 0.0
    first_gap, max_gap = settings.stream_interval_ms / 1000, settings.stream_interval_max_ms / 1000
    async for piece, final in pieces:
        pending += piece
        now = time.monotonic()
        if pending and (final or now - last_sent >= gap):
            if final and on_end is not None:
                on_end()
            batch, pending, last_sent = pending, "", now
            gap = min(max(2 * gap, first_gap), max_gap)
            yield batch
    if on_end is not None:
        on_end()
    if pending:  # an answer cut short without a final output
        yield pending


async def _vllm_outputs(outputs, checked_fields):
    """vLLM's outputs; a request vLLM refuses (it names the field) becomes an InputError."""
    try:
        async for output in outputs:
            yield output
    except VLLMClientError as err:
        raise InputError(vllm_error_message(err, fields=checked_fields)) from None
    except EngineGenerateError as err:
        cause = err.__cause__
        if isinstance(cause, (VLLMClientError, ValueError, TypeError, OverflowError)):
            # A bad request after all, found by vLLM's input processor.
            raise InputError(vllm_error_message(cause, fields=checked_fields)) from None
        raise
