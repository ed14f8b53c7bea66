# =============================================================================
# GENERATED FILE - DO NOT EDIT. Edit the notebook and run `make export-handler`.
# Source notebook: notebooks/handler_dev.ipynb
# Source cells (in order): imports, settings, engine, validation, handler
# `make check-handler` fails when this file is out of date with the notebook.
# =============================================================================


# %% cell 4 (id imports)
import argparse
import dataclasses
import difflib
import json
import os
import re
import sys
import traceback
import types
import uuid

import msgspec  # vLLM's own dependency: SamplingParams is a msgspec Struct
from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
from vllm.entrypoints.launchers.cli_args import (
    BaseFrontendArgs,
    make_arg_parser,
    validate_parsed_serve_args,
)
from vllm.entrypoints.serve.exception_handling.utils import sanitize_message
from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.engine.exceptions import EngineGenerateError


# %% cell 5 (id settings)
# The worker's own settings. A bad value stops start-up with a message naming it.
ON_CPU = current_platform.is_cpu()


def _env(name, parse, default, check=None, expected=""):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not valid: expected {expected}") from None
    if check is not None and not check(value):
        raise SystemExit(f"{name}={raw!r} is not valid: expected {expected}")
    return value


def _bool(raw):
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


MODEL = os.environ.get("MODEL", "").strip()
CONCURRENCY_MODIFIER = _env("CONCURRENCY_MODIFIER", int, 1, lambda v: 1 <= v <= 1024,
                            "an integer from 1 to 1024")
DEFAULT_MAX_TOKENS = _env("DEFAULT_MAX_TOKENS", int, 512, lambda v: v >= 1, "an integer >= 1")
# Stream mode: a job's first text goes out at once; then chunks are at least
# STREAM_INTERVAL_MS apart, the gap doubling per chunk up to STREAM_INTERVAL_MAX_MS. Short
# answers stream smoothly and a long one makes at most 2 HTTP posts a second: each post
# costs CPU that, on a small machine, the engine misses. 0: one chunk per engine step.
STREAM_INTERVAL_MS = _env("STREAM_INTERVAL_MS", int, 100, lambda v: 0 <= v <= 60_000,
                          "an integer from 0 to 60000")
STREAM_INTERVAL_MAX_MS = _env("STREAM_INTERVAL_MAX_MS", int, max(500, STREAM_INTERVAL_MS),
                              lambda v: STREAM_INTERVAL_MS <= v <= 60_000,
                              f"an integer from STREAM_INTERVAL_MS ({STREAM_INTERVAL_MS}) "
                              "to 60000")

# vLLM's settings: every argument of its engine and of its OpenAI serving layer, by its own
# name in UPPER_SNAKE (--max-model-len is MAX_MODEL_LEN), parsed and checked by the parser
# of `vllm serve` itself, so no list here goes stale. Not read: the flags of vLLM's HTTP
# server (HOST, PORT, API_KEY, SSL_*, ...; no such server runs here), and these names,
# which mean something else in a container:
NOT_ENGINE_SETTINGS = {
    "MODEL": "the kit's own: a model folder, a baked model or the embedded default's name",
    "HF_TOKEN": "huggingface_hub reads it; as an engine argument vLLM would log it",
    "LOG_LEVEL": "a common name for other programs' log level",
    "MASTER_ADDR": "torch.distributed's launcher variable",
    "MASTER_PORT": "torch.distributed's launcher variable",
    "NNODES": "torch.distributed's launcher variable",
    "NODE_RANK": "torch.distributed's launcher variable",
}
# The kit's defaults where vLLM's do not suit it; any of them can be set by its name.
KIT_ENGINE_DEFAULTS = {
    # float32 batches 4x faster than bfloat16 on a CPU without native bf16; graph capture
    # costs minutes at start-up and gains little; the share of host memory vLLM reserves
    # (its default 0.92 fails on a CPU).
    "dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.3,
} if ON_CPU else {"gpu_memory_utilization": 0.90}


class _SettingsParser(FlexibleArgumentParser):
    def error(self, message):  # argparse would print its whole usage and exit
        raise ValueError(message)


def _env_names(text):
    """vLLM's messages name its flags; a worker's user sets variables. One line."""
    lines = [line.strip() for line in str(text).strip().splitlines()] or [""]
    if re.match(r"\d+ validation errors? for ", lines[-1] if len(lines) == 1 else lines[0]):
        lines = [" ".join(lines[1:3])] if len(lines) > 1 else lines  # pydantic's: what and why
    text = re.sub(r" \[type=.*", "", re.sub(r"^argument [^:]+: ", "", lines[0]))
    return flags_as_variables(text)


def flags_as_variables(text, known=None):
    """--tool-call-parser -> TOOL_CALL_PARSER (only the names in `known`, when given)."""
    def variable(m):
        name = m[1].replace("-", "_").upper()
        return name if known is None or name in known else m[0]
    return re.sub(r"--(?:no-)?([a-z][a-z0-9-]*)", variable, text)


def _setting_argv(action, raw):
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


_ENGINE_FIELDS = {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def engine_settings(environ):
    """vLLM's parsed `vllm serve` arguments from `environ`, and the variables that set them."""
    parser = make_arg_parser(_SettingsParser())
    own = _ENGINE_FIELDS | {f.name for f in dataclasses.fields(BaseFrontendArgs)}
    actions = {a.dest.upper(): a for a in parser._actions if a.dest in own and a.option_strings}
    served = environ.get("MODEL_ID", "").strip() or os.path.basename(MODEL.rstrip("/"))
    parser.set_defaults(model=MODEL, served_model_name=[served] if served else None,
                        **KIT_ENGINE_DEFAULTS)
    argv, used = [], {}
    for name, action in sorted(actions.items()):
        raw = environ.get(name, "").strip()
        if not raw or name in NOT_ENGINE_SETTINGS:
            continue
        try:
            words = _setting_argv(action, raw)
            parser.parse_args(words)
        except ValueError as err:
            raise SystemExit(f"{name}={raw!r} is not valid: {_env_names(err)}") from None
        argv += words
        used[name] = raw
    # Runpod's vLLM worker names the OpenAI model name so; it wins over SERVED_MODEL_NAME.
    override = environ.get("OPENAI_SERVED_MODEL_NAME_OVERRIDE", "").strip()
    if override:
        argv += ["--served-model-name", override]
        used["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] = override
    args = parser.parse_args(argv)
    try:
        validate_parsed_serve_args(args)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"vLLM refused the settings {_settings(used)}: "
                         f"{_env_names(str(err).removeprefix('Error: '))}") from None
    if args.tool_call_parser and not args.enable_auto_tool_choice:  # allowed, but a trap
        print("TOOL_CALL_PARSER has no effect without ENABLE_AUTO_TOOL_CHOICE=true: vLLM "
              "refuses every tool_choice until both are set", file=sys.stderr, flush=True)
    return args, used


def _settings(used):
    return ", ".join(f"{k}={v!r}" for k, v in used.items()) or "(vLLM's and the kit's defaults)"


SERVE_ARGS, ENGINE_SETTINGS = engine_settings(os.environ)
SETTING_NAMES = {name.upper() for name in vars(SERVE_ARGS)}  # every variable vLLM reads
# The engine arguments the kit and the environment set; the rest are `vllm serve`'s defaults.
_serve_defaults = vars(make_arg_parser(_SettingsParser()).parse_args([]))
ENGINE_ARGS = {k: v for k, v in vars(SERVE_ARGS).items()
               if k == "model" or k in _ENGINE_FIELDS and v != _serve_defaults.get(k)}
if ON_CPU:
    # vLLM's engine processes read these at start. KV cache size in GiB; and OpenMP on
    # every core this process may use, which decodes about 1.5x faster than vLLM's
    # "auto" (one core kept for its scheduler). Engines sharing a machine want "auto".
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    _cores = (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
              else range(os.cpu_count() or 1))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, sorted(_cores))))


# %% cell 6 (id engine)
_engine = None


def load_engine():
    """Start vLLM once per process: under __main__ or on the first job, never at import."""
    global _engine
    if _engine is None:
        if not MODEL:
            raise SystemExit("MODEL is not set: point it at a model folder or a baked model")
        try:
            _engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs.from_cli_args(SERVE_ARGS))
        except (ValueError, TypeError) as err:  # vLLM's checks of the settings together
            if callable(getattr(err, "errors", None)) and err.errors():  # pydantic's
                first = err.errors()[0]
                err = f"--{'.'.join(map(str, first['loc'])).replace('_', '-')}: {first['msg']}"
            raise SystemExit(f"vLLM refused the settings {_settings(ENGINE_SETTINGS)}: "
                             f"{_env_names(err)}") from None
    return _engine


_openai = None  # vLLM's OpenAI serving objects on the same engine, made on first use


async def openai_serving():
    """vLLM's own OpenAI serving layer (chat, completions, models), as `vllm serve` sets it up."""
    global _openai
    if _openai is None:
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state

        engine = load_engine()
        state = types.SimpleNamespace()
        await init_app_state(engine, state, SERVE_ARGS, await engine.get_supported_tasks())
        _openai = _openai or state  # two first jobs at once: the first one's wins
    return _openai


# %% cell 7 (id validation)
class InputError(ValueError):
    """Bad job input; the message names the field and what was expected."""


ANSWER_TYPES = ("stream", "normal")
INPUT_FIELDS = ("prompt", "messages", "answerType", "sampling_params")
ROLES = ("system", "user", "assistant")
# Every field of vLLM's SamplingParams is accepted, and checked by vLLM itself, except
# these, which have no place in one {"text"} answer (their default values pass).
_LOGPROBS = "the answer carries text only; the OpenAI route (openai_route) returns logprobs"
REFUSED_SAMPLING_FIELDS = {
    "n": "a job answers with one text; for several, use the OpenAI route (openai_route)",
    "logprobs": _LOGPROBS,
    "prompt_logprobs": _LOGPROBS,
    "prompt_logprob_token_ids": _LOGPROBS,
    "prompt_logprob_start": _LOGPROBS,
    "logprob_token_ids": _LOGPROBS,
    "flat_logprobs": _LOGPROBS,
    "detokenize": "the answer is text, so it is always detokenized",
    "output_kind": "answerType sets it",
    "skip_clone": "vLLM's internal flag",
    "output_text_buffer_length": "vLLM sets it from stop",
    "routed_experts_prompt_start": "routing data (debugging, RL) has no place in a text answer",
    "trace_decode_token_ids": "vLLM's debugging and RL aid that forces the answer's tokens",
}
SAMPLING_FIELDS = tuple(f for f in SamplingParams.__struct_fields__ if not f.startswith("_"))
_DEFAULTS = SamplingParams()
_INT64 = range(-(2**63), 2**63)  # what the engine's transport carries


def _type_name(value):
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_text(field, value):
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string, got {_type_name(value)}")
    if not value.strip():
        raise InputError(f"{field} must not be empty")
    if "\x00" in value:
        raise InputError(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{field} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def parse_input(raw):
    """Validate a job's input; return (prompt or messages, stream?, sampling dict)."""
    if not isinstance(raw, dict):
        raise InputError(f"input must be a JSON object, got {_type_name(raw)}")
    unknown = sorted(set(raw) - set(INPUT_FIELDS))
    if unknown:
        raise InputError(f"unknown field input.{unknown[0]:.40}; expected some of "
                         f"{', '.join(INPUT_FIELDS)}, or openai_route and openai_input")
    if ("prompt" in raw) == ("messages" in raw):
        raise InputError("input needs exactly one of input.prompt (a string) or input.messages")
    if "prompt" in raw:
        source = _check_text("input.prompt", raw["prompt"])
    else:
        messages = raw["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError("input.messages must be a non-empty array of {role, content} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise InputError(f"input.messages[{i}] must be an object with exactly role and content")
            if m["role"] not in ROLES:
                raise InputError(f"input.messages[{i}].role must be one of {', '.join(ROLES)}")
            _check_text(f"input.messages[{i}].content", m["content"])
        source = messages
    answer_type = raw.get("answerType", "normal")
    if answer_type not in ANSWER_TYPES:
        raise InputError(f"input.answerType must be 'stream' or 'normal', got {answer_type!r:.40}")
    sampling = raw.get("sampling_params", {})
    if not isinstance(sampling, dict):
        raise InputError(f"input.sampling_params must be an object, got {_type_name(sampling)}")
    for name, value in sampling.items():
        if name not in SAMPLING_FIELDS:
            near = difflib.get_close_matches(name, SAMPLING_FIELDS, n=1)
            hint = f"; did you mean {near[0]}?" if near else "; see vLLM's SamplingParams"
            raise InputError(f"unknown field input.sampling_params.{name:.40}{hint}")
        if name in REFUSED_SAMPLING_FIELDS and value is not None \
                and value != msgspec.to_builtins(getattr(_DEFAULTS, name)):
            raise InputError(f"input.sampling_params.{name} is not accepted here: "
                             f"{REFUSED_SAMPLING_FIELDS[name]}")
    return source, answer_type == "stream", {
        k: v for k, v in sampling.items() if k not in REFUSED_SAMPLING_FIELDS}


def tokenize(engine, source):
    """Token ids for a prompt or chat messages; checks them against MAX_MODEL_LEN."""
    limit = engine.model_config.max_model_len
    field = "input.prompt" if isinstance(source, str) else "input.messages"
    chars = len(source) if isinstance(source, str) else sum(len(m["content"]) for m in source)
    if chars > 64 * limit:  # far too long: refuse before spending time tokenizing it
        raise InputError(f"{field} is {chars} characters, far over MAX_MODEL_LEN={limit} tokens")
    tokenizer = engine.get_tokenizer()
    if isinstance(source, str):
        ids = tokenizer.encode(source)
    else:
        text = tokenizer.apply_chat_template(source, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) >= limit:
        raise InputError(f"{field} is {len(ids)} tokens; MAX_MODEL_LEN={limit} leaves no room to answer")
    return ids


def vllm_error_message(err, where="input.sampling_params", fields=()):
    """vLLM's own message for a bad value, led by the field it names; one line, no paths.

    When vLLM's message names no field, the first of `fields` that it mentions is named."""
    if isinstance(err, msgspec.ValidationError):  # "Expected `int`, got `str` - at `$.top_k`"
        text, _, path = str(err).partition(" - at ")
        path = path.strip("`").removeprefix("$").lstrip(".")
        m = re.fullmatch(r"Expected `(.+)`, got `(.+)`", text)
        if m:
            text = f"must be {_expected(m[1])}, got {_expected(m[2], article=False)}"
        return f"{where}.{path} {text}" if path else f"{where} {text}"
    text = sanitize_message(str(err.args[0] if err.args else err).splitlines()[0]).rstrip(".")
    field = getattr(err, "parameter", None) or re.match(r"\w*", text)[0]
    if field in SAMPLING_FIELDS:
        return f"{where}.{field} {text.removeprefix(field).lstrip()}"
    named = [f for f in fields if re.search(rf"\b{f}\b", text)]
    if named or fields:
        return f"{where}.{(named or fields)[0]}: {text}"
    return f"{where}: {text}"


def _expected(types_, article=True):
    words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a boolean",
             "array": "an array", "object": "an object", "null": "null"}
    names = [words.get(t, t) for t in types_.split(" | ")]
    if not article:
        names = [n.split(" ", 1)[-1] for n in names]
    return " or ".join(names)


def _check_int64(value, field):
    if isinstance(value, bool):
        return
    if isinstance(value, int) and value not in _INT64:
        raise InputError(f"{field} is out of range: integers must fit in 64 bits")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_int64(int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k, field)
            _check_int64(v, field)
    elif isinstance(value, list):
        for v in value:
            _check_int64(v, field)


def _vllm_sampling_params(fields):
    try:
        return msgspec.convert(fields, SamplingParams, str_keys=True)
    except (msgspec.ValidationError, VLLMClientError, ValueError, TypeError) as err:
        raise InputError(vllm_error_message(err, fields=_blame(fields))) from None


def _blame(fields):
    """The fields that vLLM refuses on their own (with max_tokens), for a message that
    names none: e.g. a structured_outputs object with no constraint in it."""
    def refused(name):
        try:
            msgspec.convert({"max_tokens": fields.get("max_tokens"), name: fields[name]},
                            SamplingParams, str_keys=True)
        except (msgspec.ValidationError, VLLMClientError, ValueError, TypeError):
            return True
        return False
    return [name for name in fields if name != "max_tokens" and refused(name)]


def sampling_params(sampling, prompt_len, limit, stream):
    """vLLM's SamplingParams for one job, checked by vLLM; the answer fits the context."""
    fields = {"max_tokens": DEFAULT_MAX_TOKENS, **sampling}
    checked = _vllm_sampling_params(fields)  # vLLM's own types, ranges and cross-field rules
    max_tokens = checked.max_tokens
    if "max_tokens" in sampling and max_tokens is not None and max_tokens > limit:
        raise InputError(f"input.sampling_params.max_tokens must be at most MAX_MODEL_LEN={limit}, "
                         f"got {max_tokens}")
    for name, value in sampling.items():
        _check_int64(value, f"input.sampling_params.{name}")
    # Never run past the context window: the answer gets what the prompt leaves.
    room = limit - prompt_len
    fields["max_tokens"] = room if max_tokens is None else min(max_tokens, room)
    if checked.min_tokens > fields["max_tokens"]:
        raise InputError(f"input.sampling_params.min_tokens ({checked.min_tokens}) does not fit: "
                         f"the prompt ({prompt_len} tokens) leaves {room} of "
                         f"MAX_MODEL_LEN={limit}")
    # DELTA: each output holds only new text. When the worker is busy posting a chunk,
    # vLLM merges the deltas that arrive meanwhile, so chunks grow with the client's
    # latency: the first token goes out at once, and a long answer needs far fewer HTTP
    # posts than tokens.
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    return _vllm_sampling_params({**fields, "output_kind": kind.value})


# %% cell 8 (id handler)
import asyncio
import time

_aborts = set()  # abort tasks in flight (the event loop keeps only weak references)


async def handler(job):
    """Runpod entry point.

    Native input (prompt/messages): yields {"text": part} chunks (stream) or one {"text": full}.
    OpenAI input (openai_route + openai_input, as Runpod's /openai/v1 route queues it):
    yields the OpenAI response body, or, streaming, strings that form its SSE body.
    Bad input yields one {"error": ...}, which fails the job; the worker goes on. An
    unexpected error is logged here with the job id; the client gets one line with that id.
    """
    job_id = str(job.get("id", "job"))
    job_input = job.get("input")
    openai = isinstance(job_input, dict) and "openai_route" in job_input
    try:
        chunks = openai_job(job_input, job_id) if openai else native_job(job_input, job_id)
        async for chunk in chunks:
            yield chunk
    except InputError as err:
        yield {"error": str(err)}
    except Exception as err:  # never a traceback or a path to the client
        message = _log_unexpected(job_id, err)
        yield _openai_error(500, message, "InternalServerError") if openai else {"error": message}


def _log_unexpected(job_id, err):
    print(f"job {job_id} failed unexpectedly:\n{traceback.format_exc()}", file=sys.stderr,
          flush=True)
    if isinstance(err, GracefulHTTPError):  # e.g. vLLM's queue is full: its own message
        return f"job {job_id}: {vllm_error_message(err, 'engine')}"
    return f"job {job_id} failed with an internal error; the worker's log has the details"


def _tie_to_job(engine, request_id, job_id):
    """Abort the vLLM request(s) when the job's task ends cancelled before they finish.

    The SDK stops a cancelled or timed-out job by cancelling its asyncio task. If that
    lands at an await inside vLLM's generate(), vLLM aborts the request itself. But it
    often lands while the SDK posts a chunk, with this generator left suspended and vLLM
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


async def _gap_batched(pieces, on_end=None):
    """Join pieces as they arrive: the first goes out at once; then a batch waits until
    the gap since the last one has passed, STREAM_INTERVAL_MS doubling per batch up to
    STREAM_INTERVAL_MAX_MS. vLLM merges DELTA outputs while a batch is posted."""
    pending, last_sent, gap = "", float("-inf"), 0.0
    async for piece, final in pieces:
        pending += piece
        now = time.monotonic()
        if pending and (final or now - last_sent >= gap):
            if final and on_end is not None:
                on_end()
            batch, pending, last_sent = pending, "", now
            gap = min(max(2 * gap, STREAM_INTERVAL_MS / 1000), STREAM_INTERVAL_MAX_MS / 1000)
            yield batch
    if on_end is not None:
        on_end()
    if pending:  # an answer cut short without a final output
        yield pending


# ---- the native API: prompt or messages, answerType, sampling_params -----------------


async def native_job(job_input, job_id):
    source, stream, sampling = parse_input(job_input)
    engine = load_engine()
    prompt_ids = tokenize(engine, source)
    params = sampling_params(sampling, len(prompt_ids), engine.model_config.max_model_len,
                             stream)
    request_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
    done = _tie_to_job(engine, request_id, job_id)
    outputs = _vllm_outputs(engine.generate({"prompt_token_ids": prompt_ids}, params,
                                            request_id),
                            [f for f in _PROCESSOR_CHECKS if f in sampling])
    if stream:
        async for text in _gap_batched(
                ((o.outputs[0].text, o.finished) async for o in outputs), on_end=done):
            yield {"text": text}
    else:
        final = None
        async for final in outputs:
            pass
        done()
        yield {"text": final.outputs[0].text}


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


# What vLLM checks only when a request reaches the engine: against the vocabulary and the
# structured-output backend, whose messages name no field (so it comes first).
_PROCESSOR_CHECKS = ("structured_outputs", "allowed_token_ids", "logit_bias", "bad_words",
                     "stop_token_ids", "thinking_token_budget")


# ---- the OpenAI route: vLLM's own OpenAI serving layer, on the same engine ----------

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")


def _openai_error(code, message, err_type=None, param=None):
    """OpenAI's error body, as vLLM writes it; a truthy "error" fails the job."""
    return {"error": {"message": message, "type": err_type or "BadRequestError",
                      "param": param, "code": code}}


async def openai_job(job_input, job_id):
    from pydantic import ValidationError  # vLLM's own dependency, as its protocol models are
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    unknown = sorted(set(job_input) - {"openai_route", "openai_input"})
    route, body = job_input.get("openai_route"), job_input.get("openai_input")
    if unknown:
        yield _openai_error(400, f"unknown field input.{unknown[0]:.40}; the OpenAI route "
                                 "takes openai_route and openai_input", param=unknown[0][:40])
        return
    if route not in OPENAI_ROUTES:
        yield _openai_error(404, f"input.openai_route must be one of {', '.join(OPENAI_ROUTES)}, "
                                 f"got {route!r:.60}", "NotFoundError", "openai_route")
        return
    state = await openai_serving()
    if route == "/v1/models":  # no body: a GET, as the platform sends it
        if body not in (None, {}):
            yield _openai_error(405, "/v1/models takes no body (it is a GET)",
                                "MethodNotAllowedError")
            return
        yield (await state.openai_serving_models.show_available_models()).model_dump(mode="json")
        return
    if body in (None, {}):  # a GET
        yield _openai_error(405, f"{route} is a POST: it needs a body in input.openai_input",
                            "MethodNotAllowedError")
        return
    if not isinstance(body, dict):
        yield _openai_error(400, f"input.openai_input must be a JSON object, got "
                                 f"{_type_name(body)}", param="openai_input")
        return
    chat = route == "/v1/chat/completions"
    try:
        request = (ChatCompletionRequest if chat else CompletionRequest).model_validate(body)
    except ValidationError as err:
        yield _openai_error(400, _validation_message(err), param=_validation_param(err))
        return
    request.request_id = f"{job_id}-{uuid.uuid4().hex[:8]}"  # to abort it on cancel
    serving = state.openai_serving_chat if chat else state.openai_serving_completion
    if serving is None:
        yield _openai_error(501, f"this model does not serve {route}", "NotImplementedError")
        return
    engine = load_engine()
    done = _tie_to_job(engine, request.request_id, job_id)
    try:
        create = serving.create_chat_completion if chat else serving.create_completion
        result = await create(request, None)
    except (VLLMClientError, GracefulHTTPError, ValueError, TypeError, OverflowError) as err:
        result = create_error_response(err)  # vLLM's own mapping of its errors to statuses
    if isinstance(result, ErrorResponse):
        done()
        error = result.model_dump(mode="json")
        # vLLM names its flags ("requires --tool-call-parser"): say which variable to set.
        error["error"]["message"] = flags_as_variables(error["error"]["message"], SETTING_NAMES)
        yield error
    elif not hasattr(result, "__aiter__"):
        done()
        yield result.model_dump(mode="json")
    else:  # streaming: vLLM's SSE text, batched like the native stream; ends "data: [DONE]"
        async for text in _gap_batched(_sse_pieces(result, job_id), on_end=done):
            yield text


async def _sse_pieces(events, job_id):
    """(SSE text, last?) pairs; an unexpected error mid-stream ends it as vLLM's server does."""
    try:
        async for event in events:
            yield event, event.startswith("data: [DONE]")
    except Exception as err:
        message = _log_unexpected(job_id, err)
        yield f"data: {json.dumps(_openai_error(500, message, 'InternalServerError'))}\n\n", False
        yield "data: [DONE]\n\n", True


def _validation_message(err):
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith(
        ("function-", "union[", "tagged-union", "list[", "json-or-python")))
    msg = first.get("msg", "invalid request")
    count = err.error_count()
    more = f" (and {count - 1} more error{'s' * (count > 2)})" if count > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


def _validation_param(err):
    first = err.errors()[0] if err.errors() else {}
    loc = first.get("loc", ())
    return str(loc[0]) if loc else None


# %% worker start-up: the kit's worker loop (from scripts/llmkit/worker_loop.py)
"""The kit's worker loop: the runpod SDK's production loop, with its timing fixed.

In runpod 1.10.0 (and 1.12) `JobScaler` (serverless/modules/rp_scale.py) decides when
to fetch a job in `get_jobs`: when it thinks the worker is full it sleeps a fixed
second. It thinks so too often, because a job it has taken counts twice (in its queue
and in its in-progress set) until the job starts. And `run_jobs` looks for fetched jobs
only every 0.1 s. So a queued job waits up to 1.1 s after a slot frees.
`kit_job_scaler` changes only those decisions:

* a taken job counts once (`current_occupancy`);
* a full worker fetches as soon as a job ends, not on the next 1 s tick (`set_scale`,
  the first await of every `get_jobs` round, returns when there is room);
* a fetched job starts at once, not on `run_jobs`' next 0.1 s tick;
* on SIGTERM the open job-take and job-stop long-polls are cut short (they hold no job
  yet), instead of the SDK waiting for each to time out before it exits.

Everything else is the SDK's own: the job-take and batch requests, the back-off when
the queue is empty or down, per-job stop, the heartbeat, the SIGTERM drain.
`WORKER_LOOP=sdk` runs the SDK's loop unchanged. docs/WORKER_LOOP.md has the details.

Also here: a worker that must die, dies (`serve_or_die`), and the SDK logs at INFO
unless told otherwise (`quiet_sdk_logs`).

This file is the one copy. `llmkit.export` pastes it into the footer of the generated
handler.py, which runs alone on an image; tests and the fake worker import it from
llmkit. So: the standard library only, runpod passed in, and no `from __future__`.
"""

import asyncio
import contextlib
import inspect
import multiprocessing
import os
import sys
import time
import traceback
import urllib.parse
import urllib.request

# The SDK whose JobScaler internals the kit's loop was written against (pyproject pins it).
RUNPOD_VERSION = "1.10.0"
# "kit" (the default) or "sdk" (the SDK's own loop, unchanged).
WORKER_LOOP_VAR = "WORKER_LOOP"
# Set to 1 to log the kit loop's timeline: each job's end, take and start, and each fetch.
TRACE_VAR = "WORKER_LOOP_TRACE"
# The JobScaler methods the kit's loop overrides or calls, with their parameters.
_SCALER_API = {
    "set_scale": ("self",),
    "current_occupancy": ("self",),
    "get_jobs": ("self", "session"),
    "run_jobs": ("self", "session"),
    "handle_job": ("self", "session", "job"),
    "is_alive": ("self",),
    "kill_worker": ("self",),
}


class StartupError(RuntimeError):
    """A start-up failure explained by its message: no traceback needed."""


class UnknownSDK(StartupError):
    """The installed runpod SDK is not the one the kit's worker loop was written for."""


def quiet_sdk_logs():
    """INFO unless RUNPOD_DEBUG_LEVEL (or RUNPOD_LOG_LEVEL) says otherwise.

    The SDK defaults to DEBUG: a line per poll and three per streamed chunk. It reads
    the level when runpod is imported, so call this first.
    """
    os.environ.setdefault("RUNPOD_DEBUG_LEVEL", "INFO")


def check_sdk(runpod):
    """Raise UnknownSDK unless runpod's loop internals are the ones kit_job_scaler expects."""
    from runpod.serverless import worker
    from runpod.serverless.modules import rp_scale

    problems = []
    version = getattr(runpod, "__version__", "unknown")
    if version != RUNPOD_VERSION:
        problems.append(f"runpod is {version}, not {RUNPOD_VERSION}")
    scaler = getattr(rp_scale, "JobScaler", None)
    for name, params in _SCALER_API.items():
        method = getattr(scaler, name, None)
        if not callable(method):
            problems.append(f"JobScaler.{name} is missing")
        elif tuple(inspect.signature(method).parameters) != params:
            problems.append(f"JobScaler.{name}{inspect.signature(method)} is not "
                            f"{name}({', '.join(params)})")
    uses = {  # what each must still refer to for the overrides to take effect
        "JobScaler.get_jobs": (getattr(scaler, "get_jobs", None),
                               ("set_scale", "current_occupancy", "jobs_fetcher")),
        "JobScaler.__init__": (getattr(scaler, "__init__", None),
                               ("jobs_queue", "job_progress", "current_concurrency",
                                "jobs_fetcher", "stop_signals_fetcher", "_shutdown_event")),
        "JobScaler.monitor_stop_signals": (getattr(scaler, "monitor_stop_signals", None),
                                           ("stop_signals_fetcher",)),
        "worker.run_worker": (getattr(worker, "run_worker", None), ("rp_scale", "JobScaler")),
    }
    for where, (func, names) in uses.items():
        code = getattr(func, "__code__", None)
        missing = [n for n in names if code is None or n not in code.co_names]
        if missing:
            problems.append(f"{where} no longer uses {', '.join(missing)}")
    if problems:
        raise UnknownSDK(
            f"the kit's worker loop was written for runpod=={RUNPOD_VERSION} and does not "
            f"recognise this SDK ({'; '.join(problems)}). Install runpod=={RUNPOD_VERSION} "
            f"(the kit's pin), or set {WORKER_LOOP_VAR}=sdk to run the SDK's own loop.")


def kit_job_scaler(base):
    """A subclass of the SDK's JobScaler (``base``) that fetches a job when a slot frees."""
    from runpod.serverless.modules.rp_scale import log

    class KitJobScaler(base):
        """JobScaler that counts a taken job once, fetches when a job ends, starts at once."""

        def __init__(self, config):
            super().__init__(config)
            self._job_ended = asyncio.Event()
            self._taking = True  # get_jobs runs: it may still queue a job it took
            if os.environ.get(TRACE_VAR, "").strip() in ("1", "true"):
                self._trace = _trace
                self.jobs_fetcher = _traced_fetcher(self.jobs_fetcher)
            self.jobs_fetcher = self._until_shutdown(self.jobs_fetcher)
            self.stop_signals_fetcher = self._until_shutdown(self.stop_signals_fetcher)

        def _until_shutdown(self, fetch):
            """``fetch`` (a queue long-poll), cut short when the worker is told to stop.

            A cut poll raises TimeoutError, which both SDK loops take as "nothing came,
            look again", and then they see the worker is stopping. Hanging up hands
            nothing out: the queue keeps what it had not yet sent.
            """
            async def fetch_or_stop(*args):
                if not self.is_alive():
                    raise asyncio.TimeoutError
                fetching = asyncio.ensure_future(fetch(*args))
                stopping = asyncio.ensure_future(self._shutdown_event.wait())
                try:
                    await asyncio.wait({fetching, stopping},
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                if not fetching.done():
                    fetching.cancel()
                    raise asyncio.TimeoutError
                return fetching.result()  # a reply that beat the stop is used
            return fetch_or_stop

        def kill_worker(self):
            # SIGTERM (the SDK's handler): stop fetching, drain what runs, exit.
            super().kill_worker()
            self._job_ended.set()  # wakes set_scale if it waits for a free slot

        async def get_jobs(self, session):
            try:
                await super().get_jobs(session)
            finally:
                self._taking = False

        def current_occupancy(self):
            # job_progress holds every job from its take to its end; the SDK added
            # the queue on top, counting a taken job twice until it started.
            count = self.job_progress.get_job_count()
            log.debug(f"JobScaler.status | concurrency: {self.current_concurrency}; "
                      f"queue: {self.jobs_queue.qsize()}; jobs: {count}")
            return count

        async def set_scale(self):
            # The first await of each get_jobs round. While the worker is full, wait
            # for a job to end instead of get_jobs' fixed 1 s sleep. The 1 s timeout
            # keeps the SDK's pace for a new concurrency value and for shutdown.
            await super().set_scale()
            while self.is_alive() and self.current_occupancy() >= self.current_concurrency:
                self._job_ended.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._job_ended.wait(), 1.0)
                await super().set_scale()

        def _trace(self, event, job_id=""):
            pass  # replaced by the module's _trace when WORKER_LOOP_TRACE is on

        async def handle_job(self, session, job):
            try:
                await super().handle_job(session, job)
            finally:
                self._job_ended.set()  # after the SDK's own clean-up: the slot is free
                self._trace("ended", job["id"])

        async def run_jobs(self, session):
            # The SDK's run_jobs, woken by a queued job instead of a 0.1 s tick. The
            # 0.1 s timeout remains only to notice shutdown, as in the SDK.
            tasks = set()
            last_count = 0
            # Until get_jobs ends: a job it took just before a SIGTERM is still run.
            while self.is_alive() or self._taking or not self.jobs_queue.empty():
                while len(tasks) < self.current_concurrency and not self.jobs_queue.empty():
                    tasks.add(self._start_job(session, self.jobs_queue.get_nowait()))
                if tasks and len(tasks) != last_count:
                    log.info(f"Jobs in progress: {len(tasks)}")
                    last_count = len(tasks)
                waiting = set(tasks)
                queued = None
                if len(tasks) < self.current_concurrency:
                    queued = asyncio.ensure_future(self.jobs_queue.get())
                    waiting.add(queued)
                done, _ = await asyncio.wait(waiting, timeout=0.1,
                                             return_when=asyncio.FIRST_COMPLETED)
                tasks -= done
                if queued is not None:
                    if queued.done():
                        tasks.add(self._start_job(session, queued.result()))
                    else:
                        queued.cancel()  # safe: a cancelled get() leaves the item queued
            # Drain as the SDK does: stopped jobs end cancelled, real errors are logged.
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(
                        result, asyncio.CancelledError):
                    log.error(f"JobScaler.run_jobs | Task failed during shutdown drain: "
                              f"{result}")

        def _start_job(self, session, job):
            self._trace("started", job["id"])
            task = asyncio.create_task(self.handle_job(session, job))
            self.jobs_tasks[job["id"]] = task
            return task

    KitJobScaler.kit_loop = True
    return KitJobScaler


def _trace(event, job_id=""):
    print(f"loop-trace {time.time():.4f} {event} {job_id}", file=sys.stderr, flush=True)


def _traced_fetcher(fetch):
    async def traced(session, count):
        _trace("fetch", count)
        jobs = await fetch(session, count)
        _trace("fetched", ",".join(job["id"] for job in jobs or ()))
        return jobs
    return traced


def install(runpod):
    """Make runpod.serverless.start run the kit's loop; return "kit" or "sdk".

    Call before runpod.serverless.start. Raises UnknownSDK for an SDK whose internals
    differ, StartupError for a bad WORKER_LOOP.
    """
    from runpod.serverless.modules import rp_scale

    raw = os.environ.get(WORKER_LOOP_VAR, "").strip()
    choice = raw.lower() or "kit"
    if choice not in ("kit", "sdk"):
        raise StartupError(f"{WORKER_LOOP_VAR}={raw!r} is not valid: expected kit or sdk")
    if choice == "kit" and not getattr(rp_scale.JobScaler, "kit_loop", False):
        check_sdk(runpod)
        # worker.run_worker builds rp_scale.JobScaler(config): this is the one change.
        rp_scale.JobScaler = kit_job_scaler(rp_scale.JobScaler)
    return choice


def report_unhealthy(check, reason, timeout=2.0):
    """Tell the platform why this worker is about to exit, as runpod 1.11 does.

    One GET to the heartbeat URL with status=unhealthy, the check's name and the
    reason. Best effort: returns False, never raises, when it cannot be sent.
    """
    url, key = os.environ.get("RUNPOD_WEBHOOK_PING"), os.environ.get("RUNPOD_AI_API_KEY")
    worker_id = os.environ.get("RUNPOD_POD_ID")
    if not url or url == "PING_NOT_SET" or not key or not worker_id:
        return False
    runpod = sys.modules.get("runpod")
    query = urllib.parse.urlencode({
        "status": "unhealthy", "check": check, "reason": reason[:256],
        "runpod_version": getattr(runpod, "__version__", "unknown")})
    url = url.replace("$RUNPOD_POD_ID", worker_id)
    request = urllib.request.Request(url + ("&" if "?" in url else "?") + query,
                                     headers={"Authorization": key})
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
        return True
    except Exception:
        return False


def exit_now(code, check=None, reason=None):
    """End this process now with ``code``: report, flush, kill children, os._exit.

    sys.exit() only raises SystemExit; the interpreter then joins every non-daemon
    thread (vLLM's engine threads among them) and can hang forever.
    """
    if reason:
        print(f"worker exiting with code {code}: {reason}", file=sys.stderr, flush=True)
        if code:
            report_unhealthy(check or "start-up", reason)
    for child in multiprocessing.active_children():  # vLLM's engine core, the heartbeat
        with contextlib.suppress(Exception):
            child.kill()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _failed_check(exit):
    """(check name, reason) of a fitness check the SDK exited on, else None.

    runpod 1.10 calls sys.exit(1) inside the except block that caught the check's
    error, so that error is the SystemExit's __context__.
    """
    error = exit.__context__
    if error is None or isinstance(error, SystemExit):
        return None
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    if "run_fitness_checks" not in frames:
        return None
    index = frames.index("run_fitness_checks") + 1
    name = frames[index] if index < len(frames) else "fitness check"
    return name, f"fitness check {name} failed: {type(error).__name__}: {error}"


def stop_engine(engine):
    """After the SDK drained on SIGTERM: shut vLLM's engine down, in order, now.

    Left to the interpreter's exit, vLLM stops its engine core from atexit hooks and
    __del__, waits for it to go, and fails half way ("Exception ignored in
    AsyncLLM.__del__"): 10-16 s on a 2-core host, past `docker stop`'s 10 s grace.
    """
    started = time.monotonic()
    try:
        engine.shutdown()
    except Exception as error:  # exiting anyway: say so, and let exit_now kill it
        print(f"vLLM's engine did not shut down cleanly: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)
    print(f"worker drained; vLLM's engine shut down in {time.monotonic() - started:.1f} s",
          file=sys.stderr, flush=True)


def serve_or_die(start_worker):
    """Run start_worker(); if it fails, end the process promptly with a non-zero code.

    A clean return (the SDK drained after SIGTERM) or sys.exit(0) ends the process with
    0 at once: its work is done, and the interpreter's own exit would join vLLM's
    threads and run its finalizers.
    """
    try:
        start_worker()
        exit_now(0)
    except SystemExit as exit:
        if exit.code is None or exit.code == 0:
            exit_now(0)
        if isinstance(exit.code, str):  # a message for the user, e.g. a bad setting
            exit_now(1, "start-up", exit.code)
        check = _failed_check(exit)
        if check is not None:
            exit_now(exit.code if isinstance(exit.code, int) else 1, *check)
        exit_now(exit.code if isinstance(exit.code, int) else 1, "start-up",
                 f"exited with {exit.code!r} during start-up")
    except StartupError as error:
        exit_now(1, "start-up", str(error))
    except KeyboardInterrupt:
        exit_now(130)
    except BaseException as error:
        traceback.print_exc()
        exit_now(1, "start-up", f"{type(error).__name__}: {error}")


# %% worker start-up (from handler_template/handler.py.j2)
def _exit_when_engine_dies(engine, stopping, interval=1.0):
    """Exit non-zero soon after vLLM's engine dies, so Runpod replaces this worker.

    Otherwise the worker would stay up, taking jobs and failing every one of them.
    `stopping` is set on a requested shutdown, when vLLM stops its engine on purpose.
    """
    import os
    import sys
    import threading
    import time

    def watch():
        while not engine.errored:
            time.sleep(interval)
        if stopping.is_set():
            return
        print("vLLM engine died: exiting so the platform replaces this worker",
              file=sys.stderr, flush=True)
        time.sleep(2 * interval)  # let the failed job's result go out first
        os._exit(1)

    threading.Thread(target=watch, name="engine-watchdog", daemon=True).start()


def _start_worker():
    import importlib
    import threading

    quiet_sdk_logs()  # before runpod is imported: it reads the level then
    # Importing the runpod SDK takes a second or more (py-cpuinfo probes the CPU). Do it
    # while vLLM starts its engine, not before; and keep it out of the module top, which
    # vLLM's spawned processes import again.
    threading.Thread(target=importlib.import_module, args=("runpod",), daemon=True).start()
    stopping = threading.Event()
    # Start vLLM before taking jobs, so the first job does not pay for it.
    _exit_when_engine_dies(load_engine(), stopping)
    import runpod  # done by now; raises the real error if the import failed

    install(runpod)  # the kit's worker loop (WORKER_LOOP=sdk: the SDK's own)
    try:
        runpod.serverless.start(
            {
                "handler": handler,
                # Called on every job-fetch loop: how many jobs this worker runs at once.
                "concurrency_modifier": lambda current: CONCURRENCY_MODIFIER,
                # The job's final output is the list of chunks it streamed.
                "return_aggregate_stream": True,
            }
        )
    finally:
        stopping.set()  # a requested shutdown: vLLM stops its engine on purpose
    stop_engine(load_engine())  # drained after SIGTERM: stop vLLM in order, then exit


if __name__ == "__main__":
    # A failed start-up (a fitness check, a bad setting, a broken engine) ends the
    # process at once with a non-zero code, not hanging on vLLM's threads; a drained
    # worker exits 0 at once.
    serve_or_die(_start_worker)
