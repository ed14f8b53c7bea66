# =============================================================================
# GENERATED FILE - DO NOT EDIT. Edit the notebook and run `make export-handler`.
# Source notebook: notebooks/handler_dev.ipynb
# Source cells (in order): handler
# `make check-handler` fails when this file is out of date with the notebook.
# Written for the kit's runtime API 1.1 (scripts/llmkit/runtime).
# =============================================================================
if __name__ == "__main__":  # the worker: before anything else, stop unless the runtime fits
    from llmkit.runtime.versions import require

    require("1.1")


# %% cell 3 (id handler)
from llmkit.runtime import InputError, generate, read_input


async def handler(job):
    """One job: its input -> vLLM -> {"text": ...} chunks (stream) or one (normal)."""
    request = read_input(job)  # checks the input; your own fields: read_input(job, fields={"name": str})
    # Change the prompt here (request.prompt or request.messages), or fail the job with your
    # own message: raise InputError("input.name must be ...").
    async for text in generate(request):  # a cancelled job aborts vLLM's request
        yield {"text": text, **text.final}  # the last piece's .final: usage, finish_reason


# %% worker start-up (from handler_template/handler.py.j2)
if __name__ == "__main__":
    from llmkit.runtime import serve

    # The runpod worker, running `handler` (llmkit/runtime/worker.py says what it does).
    # A `chat_messages` defined above reshapes the OpenAI route's chat requests too.
    serve(handler, chat_messages=globals().get("chat_messages"))
