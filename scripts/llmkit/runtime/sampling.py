"""From a Request to what vLLM takes: the prompt's token ids and vLLM's SamplingParams,
each checked by vLLM itself, with vLLM's messages led by the field they are about."""

from __future__ import annotations

import re

import msgspec

from llmkit.runtime.errors import InputError
from llmkit.runtime.inputs import SAMPLING_FIELDS
from llmkit.runtime.vllm_api import (
    RequestOutputKind,
    SamplingParams,
    VLLMClientError,
    sanitize_message,
)

_INT64 = range(-(2**63), 2**63)  # what the engine's transport carries
# What vLLM checks only when a request reaches the engine: against the vocabulary and the
# structured-output backend, whose messages name no field (so it comes first).
PROCESSOR_CHECKS = ("structured_outputs", "allowed_token_ids", "logit_bias", "bad_words",
                    "stop_token_ids", "thinking_token_budget")


def prompt_token_ids(engine, prompt=None, messages=None):
    """Token ids for a prompt or chat messages; checks them against MAX_MODEL_LEN."""
    limit = engine.model_config.max_model_len
    field = "input.prompt" if messages is None else "input.messages"
    chars = len(prompt) if messages is None else sum(len(m["content"]) for m in messages)
    if chars > 64 * limit:  # far too long: refuse before spending time tokenizing it
        raise InputError(f"{field} is {chars} characters, far over MAX_MODEL_LEN={limit} tokens")
    tokenizer = engine.get_tokenizer()
    if messages is None:
        ids = tokenizer.encode(prompt)
    else:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) >= limit:
        raise InputError(f"{field} is {len(ids)} tokens; MAX_MODEL_LEN={limit} leaves no room "
                         f"to answer")
    return ids


def sampling_params(sampling, prompt_len, limit, stream, default_max_tokens):
    """vLLM's SamplingParams for one job, checked by vLLM; the answer fits the context."""
    fields = {"max_tokens": default_max_tokens, **sampling}
    checked = _convert(fields)  # vLLM's own types, ranges and cross-field rules
    max_tokens = checked.max_tokens
    if "max_tokens" in sampling and max_tokens is not None and max_tokens > limit:
        raise InputError(f"input.sampling_params.max_tokens must be at most "
                         f"MAX_MODEL_LEN={limit}, got {max_tokens}")
    for name, value in sampling.items():
        _check_int64(value, f"input.sampling_params.{name}")
    # Never run past the context window: the answer gets what the prompt leaves.
    room = limit - prompt_len
    fields["max_tokens"] = room if max_tokens is None else min(max_tokens, room)
    if checked.min_tokens > fields["max_tokens"]:
        raise InputError(f"input.sampling_params.min_tokens ({checked.min_tokens}) does not "
                         f"fit: the prompt ({prompt_len} tokens) leaves {room} of "
                         f"MAX_MODEL_LEN={limit}")
    # DELTA: each output holds only new text. When the worker is busy posting a chunk,
    # vLLM merges the deltas that arrive meanwhile, so chunks grow with the client's
    # latency: the first token goes out at once, and a long answer needs far fewer HTTP
    # posts than tokens.
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    return _convert({**fields, "output_kind": kind.value})


def vllm_error_message(err, where="input.sampling_params", fields=()):
    """vLLM's own message for a bad value, led by the field it names; one line, no paths.

    When vLLM's message names no field, the first of ``fields`` that it mentions is named."""
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


def _convert(fields):
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
