"""A job's input, checked: `read_input(job)` gives a Request, or raises InputError naming
the field that is wrong."""

from __future__ import annotations

import dataclasses
import difflib

import msgspec  # vLLM's own dependency: SamplingParams is a msgspec Struct

from llmkit.runtime.errors import InputError
from llmkit.runtime.vllm_api import SamplingParams

ANSWER_TYPES = ("stream", "normal")
INPUT_FIELDS = ("prompt", "messages", "answerType", "sampling_params", "lora")
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


@dataclasses.dataclass
class Request:
    """What to generate. Change it before `generate(request)`: e.g. set `messages`."""
    prompt: str | None = None  # raw text, tokenized as is
    messages: list | None = None  # chat messages, through the model's chat template
    stream: bool = False  # answerType "stream": yield text as it comes
    sampling: dict = dataclasses.field(default_factory=dict)  # vLLM's SamplingParams fields
    lora: str | None = None  # a LoRA adapter's name, one of LORA_MODULES; None: the base model
    extra: dict = dataclasses.field(default_factory=dict)  # the handler's own fields
    job_id: str = "job"


def read_input(job, fields=None) -> Request:
    """Check `job["input"]`: one of prompt or messages, answerType, sampling_params, lora
    (an adapter's name), and the handler's own `fields` ({name: type}, e.g. {"topic":
    str}), which land in `request.extra` when given. Any other field is refused by name."""
    raw, own = job.get("input"), dict(fields or {})
    if not isinstance(raw, dict):
        raise InputError(f"input must be a JSON object, got {type_name(raw)}")
    known = (*INPUT_FIELDS, *own)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"unknown field input.{unknown[0]:.40}; expected some of "
                         f"{', '.join(known)}, or openai_route and openai_input")
    if ("prompt" in raw) == ("messages" in raw):
        raise InputError("input needs exactly one of input.prompt (a string) or input.messages")
    request = Request(job_id=str(job.get("id", "job")))
    if "prompt" in raw:
        request.prompt = check_text("input.prompt", raw["prompt"])
    else:
        request.messages = _check_messages(raw["messages"])
    answer_type = raw.get("answerType", "normal")
    if answer_type not in ANSWER_TYPES:
        raise InputError(f"input.answerType must be 'stream' or 'normal', got {answer_type!r:.40}")
    request.stream = answer_type == "stream"
    request.sampling = _check_sampling(raw.get("sampling_params", {}))
    if "lora" in raw:  # whether this worker serves it, generate() checks
        request.lora = check_text("input.lora", raw["lora"])
    for name, kind in own.items():
        if name in raw:
            if kind is not None and not isinstance(raw[name], kind):
                raise InputError(f"input.{name} must be {_kind_name(kind)}, got "
                                 f"{type_name(raw[name])}")
            request.extra[name] = raw[name]
    return request


def type_name(value):
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _kind_name(kind):
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def check_text(field, value):
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string, got {type_name(value)}")
    if not value.strip():
        raise InputError(f"{field} must not be empty")
    if "\x00" in value:
        raise InputError(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{field} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def _check_messages(messages):
    if not isinstance(messages, list) or not messages:
        raise InputError("input.messages must be a non-empty array of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise InputError(f"input.messages[{i}] must be an object with exactly role and content")
        if m["role"] not in ROLES:
            raise InputError(f"input.messages[{i}].role must be one of {', '.join(ROLES)}")
        check_text(f"input.messages[{i}].content", m["content"])
    return messages


def _check_sampling(sampling):
    if not isinstance(sampling, dict):
        raise InputError(f"input.sampling_params must be an object, got {type_name(sampling)}")
    for name, value in sampling.items():
        if name not in SAMPLING_FIELDS:
            near = difflib.get_close_matches(name, SAMPLING_FIELDS, n=1)
            hint = f"; did you mean {near[0]}?" if near else "; see vLLM's SamplingParams"
            raise InputError(f"unknown field input.sampling_params.{name:.40}{hint}")
        if name in REFUSED_SAMPLING_FIELDS and value is not None \
                and value != msgspec.to_builtins(getattr(_DEFAULTS, name)):
            raise InputError(f"input.sampling_params.{name} is not accepted here: "
                             f"{REFUSED_SAMPLING_FIELDS[name]}")
    return {k: v for k, v in sampling.items() if k not in REFUSED_SAMPLING_FIELDS}
