"""A fixture handler in the default handler's shape: the runtime's tests drive it, in
process (handler_module) and as a worker (`python plain.py`, as handler.py runs)."""

from llmkit.runtime import generate, read_input, serve


async def handler(job):
    request = read_input(job)
    async for text in generate(request):
        yield {"text": text, **text.final}  # the last piece adds usage and finish_reason


if __name__ == "__main__":
    serve(handler)
