"""The worker's settings, read from environment variables when the engine starts.

Two kinds, each checked with a message that names the variable:
* the kit's own (`CONCURRENCY_MODIFIER`, `DEFAULT_MAX_TOKENS`, `STREAM_INTERVAL_MS`, ...),
  declared in kit_settings.py;
* vLLM's: every argument of its engine and of its OpenAI serving layer, by its own name in
  UPPER_SNAKE (--max-model-len is MAX_MODEL_LEN), parsed and checked by the parser of
  `vllm serve` itself, so no list here goes stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re

from llmkit.runtime import cluster, kit_settings, logs, model_cache
from llmkit.runtime.errors import SettingsError
from llmkit.runtime.vllm_api import (
    AsyncEngineArgs,
    BaseFrontendArgs,
    FlexibleArgumentParser,
    current_platform,
    make_arg_parser,
    validate_parsed_serve_args,
)

log = logs.get("settings")

ON_CPU = current_platform.is_cpu()

# Not read as engine settings: vLLM's HTTP-server flags (HOST, PORT, API_KEY, SSL_*, ...: no
# such server runs here), and these names, which mean something else in a container.
NOT_ENGINE_SETTINGS = {
    "MODEL": "the kit's own: a model folder, a baked model, the embedded default's name, or "
             "a repo id in Runpod's model cache",
    "HF_TOKEN": "huggingface_hub reads it; as an engine argument vLLM would log it",
    "LOG_LEVEL": "the kit's own log level (logs.py), not vLLM's --log-level",
    "MASTER_ADDR": "torch.distributed's launcher variable",
    "MASTER_PORT": "torch.distributed's launcher variable",
    "NNODES": "torch.distributed's launcher variable",
    "NODE_RANK": "torch.distributed's launcher variable",
}
# Flags `vllm serve` had and dropped (read from the wheels of 0.11.0 and 0.34.0): a variable
# named so is reported at start, with what replaced it, then ignored.
REMOVED_FLAGS = {
    **dict.fromkeys(("GUIDED_DECODING_BACKEND", "GUIDED_DECODING_DISABLE_ANY_WHITESPACE",
                     "GUIDED_DECODING_DISABLE_ADDITIONAL_PROPERTIES",
                     "GUIDED_DECODING_DISABLE_FALLBACK"),
                    "set STRUCTURED_OUTPUTS_CONFIG='{\"backend\": ...}' instead"),
    "TASK": "set RUNNER (generate, pooling) and CONVERT (embed, classify, ...) instead",
    "ROPE_SCALING": "set HF_OVERRIDES='{\"rope_scaling\": ...}' instead",
    "ROPE_THETA": "set HF_OVERRIDES='{\"rope_theta\": ...}' instead",
    "OVERRIDE_POOLER_CONFIG": "set POOLER_CONFIG instead",
    "CUDA_GRAPH_SIZES": "set CUDAGRAPH_CAPTURE_SIZES instead",
    **dict.fromkeys(("SWAP_SPACE", "NUM_LOOKAHEAD_SLOTS", "DISABLE_FRONTEND_MULTIPROCESSING",
                     "ENABLE_LORA_BIAS", "LORA_EXTRA_VOCAB_SIZE", "CALCULATE_KV_SCALES",
                     "MAX_NUM_PARTIAL_PREFILLS", "MAX_LONG_PARTIAL_PREFILLS",
                     "DISABLE_MM_PREPROCESSOR_CACHE", "LOGITS_PROCESSOR_PATTERN",
                     "OVERRIDE_ATTENTION_DTYPE"), "vLLM no longer has it"),
}
# Never taken for a misspelt flag: other programs' variables, and the kit's own.
OTHER_PREFIXES = ("RUNPOD_", "VLLM_", "HF_HUB_", "CUDA_", "NCCL_", "NVIDIA_", "PYTHON", "LC_",
                  "XDG_", "JUPYTER", "SSH", "OMP_", "KMP_", "MKL_", "TORCH", "PIP_", "UV_",
                  "DEBIAN", "DOCKER", "GIT_", "STREAM_INTERVAL", "HANDLER_", "WORKER_LOOP",
                  "MODEL_", "PYTEST")
KIT_VARIABLES = kit_settings.VARIABLES | {"PUBLIC_KEY", "JUPYTER_PASSWORD", "HANDLER_PATH"}
# The kit's defaults where vLLM's do not suit it; any of them can be set by its name.
KIT_ENGINE_DEFAULTS = {
    # float32 batches 4x faster than bfloat16 on a CPU without native bf16; graph capture
    # costs minutes at start-up and gains little; the share of host memory vLLM reserves
    # (its default 0.92 fails on a CPU).
    "dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.3,
} if ON_CPU else {"gpu_memory_utilization": 0.90}


@dataclasses.dataclass
class Settings:
    model: str
    kit: kit_settings.Settings  # the kit's own (CONCURRENCY_MODIFIER, ...), from settings.py
    serve_args: argparse.Namespace  # vLLM's parsed `vllm serve` arguments
    used: dict  # the variables that set them
    engine_args: dict  # the engine arguments set; the rest are `vllm serve`'s defaults

    @property
    def variable_names(self) -> set:
        """Every variable vLLM reads."""
        return {name.upper() for name in vars(self.serve_args)}

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.used.items()) \
            or "(vLLM's and the kit's defaults)"


def load(environ=os.environ) -> Settings:
    """The settings in ``environ``; raises SettingsError naming the first bad one."""
    kit = kit_settings.read(environ)  # a bad value of the kit's stops the worker here
    model, name = cached_model(environ, kit)
    serve_args, used = engine_settings(environ, model, name, kit)
    defaults = vars(make_arg_parser(_Parser()).parse_args([]))
    return Settings(
        model=model, kit=kit, serve_args=serve_args, used=used,
        engine_args={k: v for k, v in vars(serve_args).items()
                     if k == "model" or k in _ENGINE_FIELDS and v != defaults.get(k)})


_announced: set = set()


def cached_model(environ, kit):
    """(the folder vLLM loads, its default served name) for MODEL. A repo id (org/name)
    is a snapshot in Runpod's model cache (model_cache.py), served as org/name; anything
    else (a folder, a baked model, the embedded default's name) goes to vLLM as it is."""
    model = kit.model
    if not model_cache.is_repo_id(model):  # "SmolLM2-135M-Instruct" (the default) is not
        return model, None
    snapshot = model_cache.find(model, kit.model_revision, kit.model_cache_dir)
    _say_once(snapshot.describe(model), log.info)
    return str(snapshot.folder), model


def cpu_environment(environ=os.environ, ranks=1):
    """On a CPU, what vLLM's engine processes read at start: the KV cache size in GiB, and
    OpenMP on every core this process may use, which decodes about 1.5x faster than vLLM's
    "auto" (one core kept for its scheduler). Engines sharing a machine want "auto".
    ``ranks`` (local_ranks: data x pipeline x tensor parallel) each get their own share."""
    if not ON_CPU:
        return
    environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cores = (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
             else range(os.cpu_count() or 1))
    environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", omp_threads_bind(cores, ranks))


def omp_threads_bind(cores, ranks=1):
    """VLLM_CPU_OMP_THREADS_BIND for ``ranks`` engine ranks: one core list per rank, split
    evenly, with `|` between (vLLM wants `0|1` for two ranks; `0,1` fails at start). With
    fewer cores than ranks, vLLM's "auto" decides."""
    cores = sorted(cores)
    if len(cores) < ranks:
        return "auto"
    shares = [cores[i * len(cores) // ranks:(i + 1) * len(cores) // ranks] for i in range(ranks)]
    return "|".join(",".join(map(str, share)) for share in shares)


class _Parser(FlexibleArgumentParser):
    def error(self, message):  # argparse would print its whole usage and exit
        raise ValueError(message)


_ENGINE_FIELDS = {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def engine_settings(environ, model, name, kit):
    """vLLM's parsed `vllm serve` arguments from ``environ``, and the variables that set them.
    The served model name: MODEL_ID, else ``name``, else the model folder's name."""
    parser = make_arg_parser(_Parser())
    own = _ENGINE_FIELDS | {f.name for f in dataclasses.fields(BaseFrontendArgs)}
    actions = {a.dest.upper(): a for a in parser._actions if a.dest in own and a.option_strings}
    served = kit.model_id or name or os.path.basename(model.rstrip("/"))
    parser.set_defaults(model=model, served_model_name=[served] if served else None,
                        **KIT_ENGINE_DEFAULTS,
                        **cluster.engine_defaults(environ, kit.cluster, ON_CPU))
    argv, used = [], {}
    for name, action in sorted(actions.items()):
        raw = environ.get(name, "").strip()
        if not raw or name in NOT_ENGINE_SETTINGS:
            continue
        try:
            words = _argv(action, raw)
            parser.parse_args(words)
        except ValueError as err:
            raise SettingsError(f"{name}={raw!r} is not valid: {vllm_message(err)}") from None
        argv += words
        used[name] = raw
    # Runpod's vLLM worker names the OpenAI model name so; it wins over SERVED_MODEL_NAME.
    override = kit.openai_served_model_name_override
    if override:
        argv += ["--served-model-name", override]
        used["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] = override
    for line in unknown_settings(environ, set(actions)):
        _say_once(line)
    args = parser.parse_args(argv)
    if ON_CPU and args.pipeline_parallel_size > 1 and args.enforce_eager:
        compiled_for_pipeline_parallel(args, used)
    try:
        validate_parsed_serve_args(args)
    except (ValueError, TypeError) as err:
        described = ", ".join(f"{k}={v!r}" for k, v in used.items())
        raise SettingsError(f"vLLM refused the settings {described}: "
                            f"{vllm_message(str(err).removeprefix('Error: '))}") from None
    if args.tool_call_parser and not args.enable_auto_tool_choice:  # allowed, but a trap
        log.warning("TOOL_CALL_PARSER has no effect without ENABLE_AUTO_TOOL_CHOICE=true: "
                    "vLLM refuses every tool_choice until both are set")
    return args, used


def compiled_for_pipeline_parallel(args, used):
    """vLLM's CPU build (0.32) serves pipeline parallelism only when compiled: in eager mode
    its model runner skips the warm-up run (cpu_model_runner.warming_up_model), so a later
    stage never allocates the tensors it receives and fails at the first job. The kit's
    eager default gives way; ENFORCE_EAGER=true set by hand is refused before any job."""
    if "ENFORCE_EAGER" in used:
        raise SettingsError(
            f"PIPELINE_PARALLEL_SIZE={args.pipeline_parallel_size} with ENFORCE_EAGER=true "
            "fails at the first job on vLLM's CPU build: leave ENFORCE_EAGER unset (the "
            "engine compiles its graph at start, about 20 s more)")
    args.enforce_eager = False
    _say_once("PIPELINE_PARALLEL_SIZE > 1 on a CPU: the engine is compiled, not eager "
              "(vLLM's CPU build needs it), which adds about 20 s to its start", log.info)


def local_ranks(args) -> int:
    """The engine processes that run the model on this machine: vLLM's ranks, data x
    pipeline x tensor parallel over the nodes (its CPU build binds cores in that order)."""
    data = args.data_parallel_size_local or args.data_parallel_size
    nodes = max(args.nnodes, 1)  # a multi-node engine's ranks are shared among its nodes
    return max(data * args.pipeline_parallel_size * args.tensor_parallel_size // nodes, 1)


def unknown_settings(environ, flags):
    """A line for each variable that looks like a vLLM flag but names none of this vLLM's:
    one a release removed, or a typo such as MAX_MODEL_LENGTH. The worker goes on."""
    from llmkit.runtime.vllm_api import version

    for name in sorted(environ):
        if name in flags or name in KIT_VARIABLES or name in NOT_ENGINE_SETTINGS \
                or name.startswith(OTHER_PREFIXES) or not re.fullmatch(r"[A-Z][A-Z0-9_]+", name):
            continue
        if name in REMOVED_FLAGS:
            yield (f"{name} is not a setting of vLLM {version()}, which removed the flag: "
                   f"{REMOVED_FLAGS[name]}. Ignored.")
            continue
        near = difflib.get_close_matches(name, flags, n=1, cutoff=0.85)
        if near:
            yield (f"{name} is not a setting of vLLM {version()}; did you mean {near[0]}? "
                   "Ignored.")


def _say_once(line, say=log.warning):
    if line not in _announced:  # once per process, however often the settings are read
        _announced.add(line)
        say(line)


def _bool(raw):
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _argv(action, raw):
    """The command-line words for one variable's value."""
    flag = next(o for o in action.option_strings if o.startswith("--"))
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if _bool(raw) else "--no-" + flag[2:]]
    if action.nargs == 0:  # a plain switch
        return [flag] if _bool(raw) else []
    if action.nargs in ("+", "*"):  # a JSON array, one JSON object, or words
        items = json.loads(raw) if raw.startswith("[") else [raw] if raw.startswith("{") \
            else raw.split()
        return [flag, *(i if isinstance(i, str) else json.dumps(i) for i in items)]
    return [f"{flag}={raw}"]


def vllm_message(error):
    """vLLM's messages name its flags; a worker's user sets variables. One line."""
    if callable(getattr(error, "errors", None)) and error.errors():  # pydantic's
        first = error.errors()[0]
        error = f"--{'.'.join(map(str, first['loc'])).replace('_', '-')}: {first['msg']}"
    lines = [line.strip() for line in str(error).strip().splitlines()] or [""]
    if re.match(r"\d+ validation errors? for ", lines[-1] if len(lines) == 1 else lines[0]):
        lines = [" ".join(lines[1:3])] if len(lines) > 1 else lines  # pydantic's: what and why
    text = re.sub(r" \[type=.*", "", re.sub(r"^argument [^:]+: ", "", lines[0]))
    return flags_as_variables(text)


def flags_as_variables(text, known=None):
    """--tool-call-parser -> TOOL_CALL_PARSER (only the names in ``known``, when given)."""
    def variable(m):
        name = m[1].replace("-", "_").upper()
        return name if known is None or name in known else m[0]
    return re.sub(r"--(?:no-)?([a-z][a-z0-9-]*)", variable, text)
