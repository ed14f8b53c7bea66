"""The runtime's API version, and the check a handler.py makes before it starts.

A handler.py states the API it was written for (the export stamps it). It runs on a
runtime of the same major version and the same or a later minor one. Anything else would
fail on the first job, or worse, half-work: so the worker refuses to start instead.
"""

from __future__ import annotations

API_VERSION = "1.1"  # 1.1: a generated piece's .final (usage, finish_reason)
# The base image's label holding API_VERSION; `make image-iteration` reads it.
IMAGE_LABEL = "io.runpod-llm-kit.runtime-api"


def compatible(wanted: str, have: str = API_VERSION) -> bool:
    try:
        (w_major, w_minor), (h_major, h_minor) = (tuple(map(int, v.split("."))) for v in
                                                  (wanted, have))
    except ValueError:
        return False
    return w_major == h_major and w_minor <= h_minor


def mismatch(wanted: str, have: str = API_VERSION) -> str | None:
    """Why a handler written for ``wanted`` cannot run on ``have``, or None when it can."""
    if compatible(wanted, have):
        return None
    return (f"handler.py was written for the kit's runtime API {wanted}, but this image's "
            f"runtime is API {have}: rebuild the base image from the kit that exported the "
            f"handler (make image), or export the handler with this image's kit")


def require(wanted: str):
    """Stop this worker before it takes any job when its runtime cannot run the handler, or
    the installed vLLM lacks what the runtime uses: report it unhealthy, naming both
    versions, and exit non-zero."""
    from llmkit.runtime.lifecycle import exit_now

    reason = mismatch(wanted)
    if reason is not None:
        exit_now(1, "runtime-version", reason)
    reason = vllm_mismatch()
    if reason is not None:
        exit_now(1, "vllm-version", reason)


def vllm_mismatch() -> str | None:
    """Why the installed vLLM cannot run the runtime (one line), or None when it can."""
    from llmkit.runtime import vllm_api

    try:
        vllm_api.check()
    except vllm_api.VLLMUnsupported as err:
        return str(err)
    except ImportError as err:  # vLLM itself, or a library it needs, does not import
        return (f"vLLM {vllm_api.version()} does not import ({err}); "
                f"{vllm_api.supported_line()}")
    return None


if __name__ == "__main__":  # `python -m llmkit.runtime.versions`: this runtime's version
    print(API_VERSION)
