"""The runtime on the real vLLM CPU engine with the tiny model, in-process, driving a
fixture handler in the default handler's shape (tests/handlers/plain.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from llmkit import handler_module
from llmkit.runtime import inputs, sampling, vllm_engine

pytestmark = pytest.mark.engine
MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def handler(in_process):
    """The fixture handler on the tiny model, on the engine shared with
    test_runtime_openai (conftest.plain_in_process)."""
    return in_process


def run_job(handler, job_input):
    return handler.run(handler_module.collect(handler, job_input))


@pytest.fixture
def interval(handler, request, monkeypatch):
    """Set the runtime's STREAM_INTERVAL_MS and STREAM_INTERVAL_MAX_MS for one test."""
    settings = vllm_engine.settings()
    monkeypatch.setattr(settings, "kit", settings.kit.model_copy(update={
        "stream_interval_ms": request.param[0], "stream_interval_max_ms": request.param[1]}))
    return request.param


@pytest.mark.parametrize("interval", [(0, 0), (100, 500)], indirect=True)
@pytest.mark.parametrize("sampling", [
    {"temperature": 0},                         # greedy
    {"temperature": 0.9, "top_p": 0.9, "seed": 1234},  # seeded sampling
])
def test_stream_chunks_concatenate_to_the_normal_text(handler, sampling, interval):
    ask = {"prompt": "The quick brown fox",
           "sampling_params": {"max_tokens": 24, "min_tokens": 24, **sampling}}
    stream = run_job(handler, {**ask, "answerType": "stream"})
    normal = run_job(handler, {**ask, "answerType": "normal"})
    assert len(normal) == 1 and set(normal[0]) == {"text", *FINAL}
    # Every chunk has text; the last one also what vLLM reported, the same in both modes.
    assert all(set(c) == {"text"} and c["text"] for c in stream[:-1])
    assert {k: stream[-1][k] for k in FINAL} == {k: normal[0][k] for k in FINAL}
    assert normal[0]["usage"]["completion_tokens"] == 24
    assert normal[0]["finish_reason"] == "length"
    if interval == (0, 0):
        assert len(stream) > 1, "stream mode should yield more than one chunk"
    assert "".join(c["text"] for c in stream) == normal[0]["text"]
    assert normal[0]["text"]


FINAL = ("usage", "finish_reason", "stop_reason")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def vllms_usage(handler, prompt, sampling):
    """The usage vLLM's own OpenAI server reports for the same request, on the same engine."""
    body = {"model": vllm_engine.settings().serve_args.served_model_name[0], "prompt": prompt,
            **sampling}
    [answer] = run_job(handler, {"openai_route": "/v1/completions", "openai_input": body})
    counts = {k: answer["usage"][k] for k in ("prompt_tokens", "completion_tokens",
                                               "total_tokens")}
    return counts, answer["choices"][0]["finish_reason"]


@pytest.mark.parametrize("answer_type", ["stream", "normal"])
def test_usage_and_finish_reason_are_what_vllm_reports(handler, tokenizer, answer_type):
    """Each finish reason on purpose: max_tokens; the end of sequence; a stop token; a stop
    string. The counts are exact, and match vLLM's own OpenAI answer to the same request."""
    prompt = "The quick brown fox"
    word = tokenizer.encode(" fox", add_special_tokens=False)[-1]
    cases = [  # (sampling_params, finish_reason, stop_reason, completion tokens)
        ({"max_tokens": 7, "min_tokens": 7}, "length", None, 7),
        ({"max_tokens": 7, "allowed_token_ids": [tokenizer.eos_token_id]}, "stop", None, 1),
        ({"max_tokens": 7, "allowed_token_ids": [word], "stop_token_ids": [word]},
         "stop", word, 1),
        ({"max_tokens": 7, "allowed_token_ids": [word], "stop": [tokenizer.decode([word])]},
         "stop", tokenizer.decode([word]), 1),
    ]
    prompt_tokens = len(tokenizer.encode(prompt))
    for params, finish, stop, completion in cases:
        chunks = run_job(handler, {"prompt": prompt, "answerType": answer_type,
                                   "sampling_params": {"temperature": 0, **params}})
        last = chunks[-1]
        assert (last["finish_reason"], last["stop_reason"]) == (finish, stop), (params, last)
        assert last["usage"] == {"prompt_tokens": prompt_tokens,
                                 "completion_tokens": completion,
                                 "total_tokens": prompt_tokens + completion}, params
        usage, reason = vllms_usage(handler, prompt, {"temperature": 0, **params})
        assert (last["usage"], last["finish_reason"]) == (usage, reason), params


def test_an_aborted_request_ends_with_finish_reason_abort(handler):
    """vLLM aborts a request (here the engine is told to, as on a client's hang-up in the
    OpenAI layer): the answer ends with what was made, and says so."""
    async def job():
        chunks, aborted = [], False
        async for chunk in handler.job({"id": "to-abort", "input": {
                "prompt": "fox", "answerType": "stream",
                "sampling_params": {"max_tokens": 200, "min_tokens": 200}}}):
            chunks.append(chunk)
            if not aborted:
                engine = vllm_engine.engine()
                ids = [r for r in engine.output_processor.external_req_ids if "to-abort" in r]
                await engine.abort(ids)
                aborted = True
        return chunks

    chunks = handler.run(job())
    assert chunks[-1]["finish_reason"] == "abort", chunks[-1]
    assert 0 < chunks[-1]["usage"]["completion_tokens"] < 200


async def timed_chunks(handler, job_input):
    """(seconds since the job started, chunk) for each chunk the handler yields."""
    start, out = time.monotonic(), []
    async for chunk in handler.job({"id": "timed", "input": job_input}):
        out.append((time.monotonic() - start, chunk))
    return out


class PacedEngine:
    """The real engine's config and tokenizer, with one-token outputs at a fixed pace: the
    handler's chunking policy on a known token timeline."""

    def __init__(self, real, tokens: int, step_s: float) -> None:
        self.model_config, self.get_tokenizer = real.model_config, real.get_tokenizer
        self.tokens, self.step_s = tokens, step_s

    async def generate(self, prompt, params, request_id):
        for i in range(self.tokens):
            await asyncio.sleep(self.step_s)
            last = i == self.tokens - 1
            yield SimpleNamespace(outputs=[SimpleNamespace(
                text=f" t{i}", token_ids=[i], finish_reason="length" if last else None,
                stop_reason=None)], finished=last)


@pytest.mark.parametrize("interval", [(100, 400)], indirect=True)
def test_stream_chunks_are_spaced_by_a_growing_interval_and_the_first_is_not_held(
        handler, interval, monkeypatch):
    paced = PacedEngine(vllm_engine.engine(), tokens=80, step_s=0.02)  # 1.6 s of tokens
    monkeypatch.setattr(vllm_engine, "engine", lambda: paced)
    timed = handler.run(timed_chunks(handler, {"prompt": "hi", "answerType": "stream"}))
    times, texts = [t for t, _ in timed], [c["text"] for _, c in timed]
    assert timed[-1][1]["usage"]["completion_tokens"] == 80
    assert "".join(texts) == "".join(f" t{i}" for i in range(80))
    # The first token leaves at once, alone: held for the first interval (0.1 s), it
    # would carry the next few tokens with it.
    assert texts[0] == " t0", timed[:2]
    # Then the gaps between chunks are at least 0.1, 0.2, 0.4, 0.4 ... s (the last chunk,
    # the answer's end, may come sooner): posts grow with time, not with tokens. Only
    # the lower bounds: a slow scheduler tick can stretch a gap, never shorten one. The
    # count below bounds them from above as a whole.
    start, cap = interval[0] / 1000, interval[1] / 1000
    want = [min(start * 2 ** k, cap) for k in range(len(times) - 1)]
    gaps = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    assert all(w * 0.95 <= g for g, w in zip(gaps[:-1], want, strict=False)), gaps
    assert 5 <= len(timed) <= 4 + (times[-1] - 0.7) / cap + 2, times


def test_answer_type_defaults_to_normal(handler):
    out = run_job(handler, {"prompt": "Hello", "sampling_params": {"max_tokens": 8}})
    assert len(out) == 1 and "text" in out[0]


def test_chat_messages_use_the_chat_template(handler):
    out = run_job(handler, {"messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi there"}],
                            "sampling_params": {"max_tokens": 8, "min_tokens": 8}})
    assert len(out) == 1 and out[0]["text"]


def test_default_max_tokens_is_useful_and_bounded_by_the_context(handler):
    default = vllm_engine.settings().kit.default_max_tokens
    params = sampling.sampling_params({}, prompt_len=10, limit=4096, stream=False,
                                      default_max_tokens=default)
    assert params.max_tokens == default == 512  # not vLLM's 16
    assert sampling.sampling_params({}, 200, MAX_MODEL_LEN, False, default).max_tokens \
        == MAX_MODEL_LEN - 200


LONG_PROMPT = "fox dog " * 400  # several hundred tokens with the tiny tokenizer

BAD_INPUTS = [
    (None, "input must be a JSON object, got null"),
    (["prompt"], "input must be a JSON object, got array"),
    ({}, "exactly one of input.prompt"),
    ({"prompt": ""}, "input.prompt must not be empty"),
    ({"prompt": "   \n"}, "input.prompt must not be empty"),
    ({"prompt": 42}, "input.prompt must be a string, got int"),
    ({"prompt": None}, "input.prompt must be a string, got null"),
    ({"prompt": "a\x00b"}, "input.prompt must not contain NUL"),
    ({"prompt": "bad \ud800 surrogate"}, "input.prompt is not valid Unicode"),
    ({"prompt": "hi", "messages": []}, "exactly one of input.prompt"),
    ({"prompt": "hi", "answerType": "streaming"}, "input.answerType must be 'stream' or 'normal'"),
    ({"prompt": "hi", "answer_type": "stream"}, "unknown field input.answer_type"),
    ({"prompt": "hi", "sampling_params": "hot"}, "input.sampling_params must be an object"),
    # vLLM's own checks, led by the field.
    ({"prompt": "hi", "sampling_params": {"max_tokens": 0}},
     "input.sampling_params.max_tokens must be at least 1, got 0"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": -3}}, "max_tokens must be at least 1"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": "10"}},
     "input.sampling_params.max_tokens must be an integer or null, got string"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": True}},
     "max_tokens must be an integer or null, got boolean"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": 10**9}},
     "max_tokens must be at most MAX_MODEL_LEN=256"),
    ({"prompt": "hi", "sampling_params": {"temperature": -1}},
     "input.sampling_params.temperature must be non-negative, got -1"),
    ({"prompt": "hi", "sampling_params": {"top_p": 0}}, "top_p must be in (0, 1], got 0"),
    ({"prompt": "hi", "sampling_params": {"top_k": -7}}, "top_k must be 0 (disable), or at least"),
    ({"prompt": "hi", "sampling_params": {"stop": [1, 2]}},
     "input.sampling_params.stop[0] must be a string, got integer"),
    ({"prompt": "hi", "sampling_params": {"best_of": 3}},
     "unknown field input.sampling_params.best_of"),
    ({"prompt": "hi", "sampling_params": {"max_token": 3}},
     "unknown field input.sampling_params.max_token; did you mean max_tokens?"),
    # Cross-field rules: the two tracebacks, and the context window.
    ({"prompt": "hi", "sampling_params": {"min_tokens": 600}},  # with the default max_tokens
     "input.sampling_params.min_tokens must be less than or equal to max_tokens=512, got 600"),
    ({"prompt": "hi", "sampling_params": {"min_tokens": 20, "max_tokens": 10}},
     "input.sampling_params.min_tokens must be less than or equal to max_tokens=10, got 20"),
    ({"prompt": "fox dog " * 50, "sampling_params": {"min_tokens": 250, "max_tokens": 250}},
     "input.sampling_params.min_tokens (250) does not fit: the prompt"),
    ({"prompt": "hi", "sampling_params": {"stop": ["x"], "detokenize": False}},
     "input.sampling_params.detokenize is not accepted here"),
    ({"prompt": "hi", "sampling_params": {"n": 2}},
     "input.sampling_params.n is not accepted here: a job answers with one text; for several, "
     "use the OpenAI route"),
    ({"prompt": "hi", "sampling_params": {"seed": 2**64}},
     "input.sampling_params.seed is out of range: integers must fit in 64 bits"),
    ({"prompt": "hi", "sampling_params": {"repetition_detection": {"max_pattern_size": 3}}},
     "input.sampling_params.repetition_detection: min_count must be >= 2"),
    ({"prompt": "hi", "sampling_params": {"structured_outputs": {}}},
     "input.sampling_params.structured_outputs: You must use one kind of structured outputs"),
    # Inputs that make vLLM itself raise, past the checks above, in its input processor.
    ({"prompt": "hi", "sampling_params": {"allowed_token_ids": [99999]}},
     "input.sampling_params.allowed_token_ids contains out-of-vocab token id"),
    ({"prompt": "hi", "sampling_params": {"logit_bias": {"99999": 1.0}}},
     "input.sampling_params.logit_bias token_id(s) [99999] in logit_bias contain out-of-vocab"),
    ({"prompt": "hi", "sampling_params": {"structured_outputs": {"grammar": "root ::= ("}}},
     "input.sampling_params.structured_outputs: Invalid grammar specification"),
    ({"prompt": "hi", "sampling_params": {"thinking_token_budget": 16}},
     "input.sampling_params.thinking_token_budget is set but reasoning_config is not configured"),
    ({"messages": "hello"}, "input.messages must be a non-empty array"),
    ({"messages": [{"role": "user"}]}, "input.messages[0] must be an object with exactly role"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "input.messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": ""}]},
     "input.messages[0].content must not be empty"),
    ({"prompt": LONG_PROMPT}, "tokens; MAX_MODEL_LEN=256 leaves no room"),
    ({"prompt": "x" * 100_000}, "input.prompt is 100000 characters, far over MAX_MODEL_LEN=256"),
    ({"prompt": "hi", "lora": 3}, "input.lora must be a string, got int"),
    ({"prompt": "hi", "lora": "mine"}, "input.lora: no LoRA adapter named 'mine'; this worker "
                                       "serves none: set ENABLE_LORA=true and LORA_MODULES"),
]


def assert_one_clean_line(message):
    """What a client may see: one short line, no traceback, no file path of the worker."""
    assert "\n" not in message and len(message) < 300, message
    assert "Traceback" not in message and 'File "' not in message, message
    assert "site-packages" not in message and "/work/" not in message, message


@pytest.mark.parametrize("job_input, expected", BAD_INPUTS,
                         ids=[e[:40] for _, e in BAD_INPUTS])
def test_bad_input_yields_one_error_naming_the_field(handler, job_input, expected):
    out = run_job(handler, job_input)
    assert len(out) == 1 and set(out[0]) == {"error"}, out
    assert expected in out[0]["error"]
    assert_one_clean_line(out[0]["error"])


# A valid value for each field of vLLM's SamplingParams that the native API accepts. A field
# vLLM adds later fails the test below until it is added here or refused in the runtime.
ACCEPTED = {
    "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
    "temperature": 0.7, "watermarking": True, "top_p": 0.9, "top_k": 5, "min_p": 0.05,
    "seed": 7, "stop": ["\n\n"], "stop_token_ids": [3], "ignore_eos": True, "max_tokens": 4,
    "min_tokens": 2, "skip_special_tokens": False, "spaces_between_special_tokens": False,
    "include_stop_str_in_output": True, "stream_interval": 2,
    "structured_outputs": {"regex": "[ab]{4}"}, "logit_bias": {"5": 3.0},
    "allowed_token_ids": [5, 6, 7, 8], "extra_args": {"note": "for plugins"},
    "bad_words": ["zz"], "skip_reading_prefix_cache": True,
    "repetition_detection": {"max_pattern_size": 4, "min_pattern_size": 2, "min_count": 3},
    # vLLM accepts it only with a reasoning parser, which the tiny model has not.
    "thinking_token_budget": 16,
}
NEEDS_A_REASONING_PARSER = {"thinking_token_budget"}


def test_the_native_api_knows_every_field_of_vllms_sampling_params(handler):
    from vllm import SamplingParams

    public = [f for f in SamplingParams.__struct_fields__ if not f.startswith("_")]
    assert list(inputs.SAMPLING_FIELDS) == public
    missing = set(public) - set(ACCEPTED) - set(inputs.REFUSED_SAMPLING_FIELDS)
    assert not missing, f"vLLM has sampling fields this test does not know: {missing}"


@pytest.mark.parametrize("stream", [False, True], ids=["normal", "stream"])
def test_every_sampling_field_is_accepted_or_refused_by_name(handler, stream):
    answer_type = "stream" if stream else "normal"
    for field in inputs.SAMPLING_FIELDS:
        if field in inputs.REFUSED_SAMPLING_FIELDS:
            out = run_job(handler, {"prompt": "hi", "answerType": answer_type,
                                    "sampling_params": {field: [[[]]]}})
            assert out == [{"error": f"input.sampling_params.{field} is not accepted here: "
                                     f"{inputs.REFUSED_SAMPLING_FIELDS[field]}"}]
            continue
        sampling = {"max_tokens": 4, field: ACCEPTED[field]}
        out = run_job(handler, {"prompt": "hi", "answerType": answer_type,
                                "sampling_params": sampling})
        if field in NEEDS_A_REASONING_PARSER:
            assert out[0]["error"].startswith(f"input.sampling_params.{field} "), out
        else:
            assert out and all(set(c) == {"text"} for c in out[:-1]), (field, out)
            assert set(out[-1]) == {"text", *FINAL}, (field, out)
        # A value of a type no field takes: vLLM's type check, named.
        out = run_job(handler, {"prompt": "hi", "sampling_params": {field: [[[]]]}})
        assert len(out) == 1 and out[0]["error"].startswith(f"input.sampling_params.{field}"), out
        assert_one_clean_line(out[0]["error"])


def test_structured_outputs_constrain_the_native_answer(handler):
    out = run_job(handler, {"prompt": "hi", "sampling_params": {
        "structured_outputs": {"choice": ["yes", "no"]}, "temperature": 0}})
    assert [c["text"] for c in out] in (["yes"], ["no"])
    out = run_job(handler, {"prompt": "hi", "sampling_params": {
        "max_tokens": 12, "min_tokens": 12, "ignore_eos": True, "stop_token_ids": [5]}})
    assert len(out) == 1 and "text" in out[0]


class ExplodingEngine(PacedEngine):
    async def generate(self, prompt, params, request_id):
        raise RuntimeError("kaboom in /secret/worker/path.py")
        yield  # an async generator, as vLLM's


def test_an_unexpected_error_is_logged_and_the_client_gets_one_line_with_the_job_id(
        handler, monkeypatch, capfd):
    exploding = ExplodingEngine(vllm_engine.engine(), tokens=1, step_s=0)
    monkeypatch.setattr(vllm_engine, "engine", lambda: exploding)
    out = handler.run(handler_module.collect(handler, {"prompt": "hi"}, job_id="job-42"))
    assert out == [{"error": "job job-42 failed with an internal error; the worker's log has "
                             "the details"}]
    log = capfd.readouterr().err
    assert "job job-42 failed unexpectedly" in log and "Traceback" in log and "kaboom" in log


def test_eight_concurrent_jobs_all_complete(handler):
    async def eight():
        def job(i):
            return {"prompt": f"job number {i}", "answerType": "stream",
                    "sampling_params": {"max_tokens": 16, "min_tokens": 16,
                                        "temperature": 0.8, "seed": i}}

        jobs = [handler_module.collect(handler, job(i), job_id=f"job-{i}") for i in range(8)]
        return await asyncio.gather(*jobs)

    results = handler.run(eight())
    assert len(results) == 8
    for chunks in results:
        assert chunks and all("text" in c for c in chunks)
        assert "".join(c["text"] for c in chunks)
