"""`generate(request)`: vLLM's answer as text, with the job's lifetime handled.

* Stream mode yields the text as it comes, batched (the first piece at once, then at
  most one chunk per STREAM_INTERVAL_MS, the gap doubling up to STREAM_INTERVAL_MAX_MS);
  normal mode yields the whole answer once.
* Each piece is a `Text`: a str, whose `final` is {} until the answer's last piece. There
  it holds what vLLM reported: the token usage, in OpenAI's shape, and why the answer
  stopped (`finish_reason` "stop" with `stop_reason` the stop string or token that
  matched, or null for the end of sequence; "length" for max_tokens or the context;
  "abort"). The default handler adds it to its last chunk: ``{"text": t, **t.final}``.
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

from llmkit.runtime import logs, timeline, vllm_app, vllm_engine
from llmkit.runtime.errors import InputError
from llmkit.runtime.inputs import Request
from llmkit.runtime.sampling import (
    PROCESSOR_CHECKS,
    prompt_token_ids,
    sampling_params,
    vllm_error_message,
)
from llmkit.runtime.vllm_api import EngineGenerateError, VLLMClientError

log = logs.get("generation")

_aborts = set()  # abort tasks in flight (the event loop keeps only weak references)


class Text(str):
    """A piece of the answer. ``final``: {} until the last piece, then ``usage``
    (prompt_tokens, completion_tokens, total_tokens), ``finish_reason`` and ``stop_reason``."""

    final: dict

    def __new__(cls, text, final=None):
        piece = super().__new__(cls, text)
        piece.final = final or {}
        return piece


async def generate(request: Request):
    """Yield the answer's text for ``request``: pieces (stream) or the whole (normal), each
    a `Text`; the last one's ``final`` says how many tokens it took and why it stopped."""
    engine = vllm_engine.engine()
    settings = vllm_engine.settings()
    ids = prompt_token_ids(engine, request.prompt, request.messages)
    params = sampling_params(request.sampling, len(ids), engine.model_config.max_model_len,
                             request.stream, settings.kit.default_max_tokens)
    adapter = await lora_request(request.lora) if request.lora else None
    request_id = f"{request.job_id}-{uuid.uuid4().hex[:8]}"
    done = tie_to_job(engine, request_id, request.job_id)
    lora = {"lora_request": adapter} if adapter else {}
    timeline.event("engine-in", request.job_id)
    outputs = _vllm_outputs(engine.generate({"prompt_token_ids": ids}, params, request_id, **lora),
                            [f for f in PROCESSOR_CHECKS if f in request.sampling],
                            request.job_id)
    pieces = _with_usage(outputs, len(ids))
    if request.stream:
        first = True
        async for text, final in gap_batched(pieces, settings.kit, on_end=done):
            if first:
                timeline.event("first-text", request.job_id)
                first = False
            yield Text(text, final)
    else:
        text, final = "", None
        async for piece in pieces:  # FINAL_ONLY: one output, the whole answer
            text, final = piece
        done()
        yield Text(text, final)


async def _with_usage(outputs, prompt_tokens):
    """(text, final) per vLLM output: final is None until the last output, then its usage
    and finish reason. DELTA outputs hold the new tokens only; FINAL_ONLY, all at once."""
    completion = 0
    async for output in outputs:
        answer = output.outputs[0]
        completion += len(answer.token_ids)
        final = None
        if output.finished:
            final = {"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                               "total_tokens": prompt_tokens + completion},
                     "finish_reason": answer.finish_reason, "stop_reason": answer.stop_reason}
        yield answer.text, final


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
            log.info(f"job {job_id} stopped: vLLM request {request_id} had already "
                     "finished, nothing to abort")
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
    log.info(f"job {job_id} stopped: vLLM request {request_id} aborted "
             f"({running} request(s) still running)")


async def gap_batched(pieces, kit, on_end=None):
    """Join (text, final) pieces as they arrive, into (batch, final) pairs: the first goes
    out at once; then a batch waits until the gap since the last one has passed, the gap
    doubling per batch from STREAM_INTERVAL_MS up to STREAM_INTERVAL_MAX_MS. vLLM merges
    DELTA outputs meanwhile. The final piece (any truthy ``final``) goes out at once, with
    what is pending, even if that is no text: it carries ``final``."""
    pending, last_sent, gap = "", float("-inf"), 0.0
    first_gap, max_gap = kit.stream_interval_ms / 1000, kit.stream_interval_max_ms / 1000
    async for piece, final in pieces:
        pending += piece
        now = time.monotonic()
        if final or (pending and now - last_sent >= gap):
            if final and on_end is not None:
                on_end()
            batch, pending, last_sent = pending, "", now
            gap = min(max(2 * gap, first_gap), max_gap)
            yield batch, final
    if on_end is not None:
        on_end()
    if pending:  # an answer cut short without a final output
        yield pending, None


async def _vllm_outputs(outputs, checked_fields, job_id=""):
    """vLLM's outputs; a request vLLM refuses (it names the field) becomes an InputError."""
    try:
        first = True
        async for output in outputs:
            if first:
                timeline.event("engine-out", job_id)
                first = False
            yield output
    except VLLMClientError as err:
        raise InputError(vllm_error_message(err, fields=checked_fields)) from None
    except EngineGenerateError as err:
        cause = err.__cause__
        if isinstance(cause, (VLLMClientError, ValueError, TypeError, OverflowError)):
            # A bad request after all, found by vLLM's input processor.
            raise InputError(vllm_error_message(cause, fields=checked_fields)) from None
        raise
