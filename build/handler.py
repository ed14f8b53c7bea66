# =============================================================================
# GENERATED FILE - DO NOT EDIT. Edit the notebook and run `make export-handler`.
# Source notebook: notebooks/handler_dev.ipynb
# Source cells (in order): imports, handler
# `make check-handler` fails when this file is out of date with the notebook.
# Written for the kit's runtime API 1.1 (scripts/llmkit/runtime).
# =============================================================================
if __name__ == "__main__":  # the worker: before anything else, stop unless the runtime fits
    from llmkit.runtime.versions import require

    require("1.1")


# %% cell 4 (id imports)
# The kit's runtime (scripts/llmkit/runtime): settings, vLLM, input checks, streaming,
# cancellation, errors and the OpenAI route. Your part is the handler below.
from llmkit.runtime import generate, read_input


# %% cell 5 (id handler)
async def handler(job):
    """One Runpod job: input -> prompt -> generate -> output.

    job["input"]: "prompt" (raw text) or "messages" (chat), "answerType" ("stream" or
    "normal") and "sampling_params" (any of vLLM's SamplingParams). Yields {"text": ...}
    chunks as the answer comes (stream), or one {"text": full} (normal); the last one also
    has "usage" (token counts) and "finish_reason". Bad input fails the job with a message
    naming the field, and the worker goes on.
    """
    request = read_input(job)  # your own input fields: read_input(job, fields={"name": str})
    # Change the prompt here: request.prompt (raw text) or request.messages (chat). To fail
    # the job with your own message: raise InputError("input.name: ...").
    async for text in generate(request):  # tied to this job: a cancel aborts vLLM's request
        # text.final is {} but on the last piece: its usage and finish_reason, from vLLM.
        yield {"text": text, **text.final}  # add your own fields, or yield more chunks


# The OpenAI route (/openai/v1) answers through vLLM's OpenAI layer, without handler(). To
# change its chat prompts too, define chat_messages(messages) -> messages here, and call it
# in handler() as well (notebooks/recipes/system_prompt.ipynb).


# %% worker start-up (from handler_template/handler.py.j2)
if __name__ == "__main__":
    from llmkit.runtime import serve

    # The runpod worker, running `handler` (llmkit/runtime/worker.py says what it does).
    # A `chat_messages` defined above reshapes the OpenAI route's chat requests too.
    serve(handler, chat_messages=globals().get("chat_messages"))
