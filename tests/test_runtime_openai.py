"""The runtime's OpenAI route, in-process on the real vLLM CPU engine (tiny model).

A job {"openai_route", "openai_input"} is what Runpod's /v2/{id}/openai/v1/... route queues;
vLLM's own OpenAI serving layer answers it on the worker's engine. The endpoint's side (HTTP,
the openai client) is tested with the local endpoint.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from shared_engine import IN_PROCESS_MAX_LOGPROBS, IN_PROCESS_MAX_MODEL_LEN, IN_PROCESS_NAME

from llmkit import handler_module
from llmkit.runtime import vllm_app, vllm_engine
from llmkit.runtime.jobs import job_function

pytestmark = pytest.mark.engine
# The settings of the in-process engine (conftest.IN_PROCESS_SETTINGS)
MAX_MODEL_LEN = IN_PROCESS_MAX_MODEL_LEN
NAME = IN_PROCESS_NAME
MAX_LOGPROBS = IN_PROCESS_MAX_LOGPROBS
HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def handler(in_process):
    """The fixture handler on the tiny model, on the engine shared with
    test_runtime_engine (conftest.plain_in_process)."""
    return in_process


def call(handler, route, body=None, job_id="job"):
    job_input = {"openai_route": route} if body is None else {"openai_route": route,
                                                             "openai_input": body}
    return handler.run(handler_module.collect(handler, job_input, job_id))


def one_body(out):
    assert len(out) == 1 and isinstance(out[0], dict), out
    assert "error" not in out[0], out[0]
    return out[0]


def sse_events(chunks):
    """The JSON events of an SSE body made of the yielded strings; checks its framing."""
    assert chunks and all(isinstance(c, str) for c in chunks), chunks
    body = "".join(chunks)
    assert body.endswith("data: [DONE]\n\n"), body[-200:]
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events[:3]
    return [json.loads(e[6:]) for e in events[:-1]]


def test_engine_arguments_from_the_environment_reach_the_engine(handler):
    engine = vllm_engine.engine()
    assert engine.model_config.max_logprobs == MAX_LOGPROBS
    assert engine.vllm_config.structured_outputs_config.disable_any_whitespace is True
    assert vllm_engine.settings().serve_args.tool_call_parser == "pythonic"
    out = call(handler, "/v1/chat/completions",
               {"model": NAME, "messages": HI, "logprobs": True, "top_logprobs": 5})
    assert out[0]["error"]["code"] == 400 and "5" in out[0]["error"]["message"], out


@pytest.mark.parametrize("body", [None, {}], ids=["no body", "empty body"])
def test_models_lists_the_served_model_name(handler, body):
    models = one_body(call(handler, "/v1/models", body))
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [NAME]


def test_a_chat_completion(handler):
    reply = one_body(call(handler, "/v1/chat/completions", {
        "model": NAME, "messages": HI, "max_tokens": 8, "min_tokens": 8, "temperature": 0}))
    assert reply["object"] == "chat.completion" and reply["model"] == NAME
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] == 8


def test_a_text_completion(handler):
    reply = one_body(call(handler, "/v1/completions", {
        "model": NAME, "prompt": "The quick brown fox", "max_tokens": 8, "min_tokens": 8,
        "temperature": 0, "stop": ["never"], "seed": 3}))
    assert reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] == 8
    assert isinstance(reply["choices"][0]["text"], str)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_streamed_deltas_join_to_the_non_streamed_text_for_greedy(handler, route):
    chat = route == "/v1/chat/completions"
    body = {"model": NAME, "max_tokens": 32, "min_tokens": 32, "temperature": 0,
            **({"messages": HI} if chat else {"prompt": "The quick brown fox"})}
    whole = one_body(call(handler, route, body))["choices"][0]
    chunks = call(handler, route, {**body, "stream": True})
    events = sse_events(chunks)
    parts = [(e["choices"][0]["delta"].get("content") or "") if chat else e["choices"][0]["text"]
             for e in events if e["choices"]]
    assert "".join(parts) == (whole["message"]["content"] if chat else whole["text"])
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    # Batched like the native stream: fewer yields than SSE events, the first one alone.
    assert len(chunks) < len(events) + 1 and chunks[0].count("data: ") == 1, len(chunks)


def test_a_json_schema_response_format_yields_json_valid_against_it(handler):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "rank": {"type": "integer", "enum": [1, 2, 3]}},
              "required": ["city", "rank"], "additionalProperties": False}
    reply = one_body(call(handler, "/v1/chat/completions", {
        "model": NAME, "messages": HI, "max_tokens": 120, "temperature": 0,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "place", "schema": schema}}}))
    answer = json.loads(reply["choices"][0]["message"]["content"])
    assert set(answer) == {"city", "rank"}
    assert isinstance(answer["city"], str) and len(answer["city"]) <= 12
    assert answer["rank"] in (1, 2, 3)


def test_n_2_with_logprobs(handler):
    reply = one_body(call(handler, "/v1/chat/completions", {
        "model": NAME, "messages": HI, "max_tokens": 6, "min_tokens": 6, "n": 2, "seed": 1,
        "logprobs": True, "top_logprobs": 2}))
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    for choice in reply["choices"]:
        tokens = choice["logprobs"]["content"]
        assert len(tokens) == 6
        assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in tokens)


def test_tool_choice_without_auto_tool_choice_is_refused_cleanly(handler):
    """TOOL_CALL_PARSER is set here but ENABLE_AUTO_TOOL_CHOICE is not: vLLM 0.32 then
    refuses tool_choice, named or "auto". (test_openai_route has both set: calls work.)"""
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "auto"):
        out = call(handler, "/v1/chat/completions",
                   {"model": NAME, "messages": HI, "tools": tools, "tool_choice": choice})
        assert len(out) == 1 and out[0]["error"]["code"] == 400, out
        # vLLM's message names its flags; the worker's user sets variables.
        assert "TOOL_CALL_PARSER" in out[0]["error"]["message"], out
        assert "--" not in out[0]["error"]["message"], out


ERRORS = [  # (route, body, HTTP status, what the message says)
    ("/v1/chat/completions", {"model": "nope", "messages": HI}, 404,
     "The model `nope` does not exist"),
    ("/v1/chat/completions", {"model": NAME, "messages": HI, "temperature": "hot"}, 400,
     "temperature: Input should be a valid number"),
    ("/v1/chat/completions", {"model": NAME, "messages": "hi"}, 400, "messages"),
    ("/v1/completions", {"model": NAME, "prompt": "fox dog " * 400}, 400,
     "maximum context length is 256 tokens"),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": 600}, 400,
     "max_tokens=600 cannot be greater than max_model_len=256"),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "logit_bias": {"99999": 1}}, 400,
     "out-of-vocab"),
    ("/v1/chat/completions", None, 405, "is a POST"),
    ("/v1/chat/completions", [1, 2], 400, "input.openai_input must be a JSON object"),
    ("/v1/models", {"model": NAME}, 405, "/v1/models takes no body"),
    ("/v1/embeddings", {"model": NAME, "input": "x"}, 404,
     "vLLM serves no /v1/embeddings for this model"),
]


@pytest.mark.parametrize("route, body, status, message", ERRORS,
                         ids=[m[:40] for *_, m in ERRORS])
def test_errors_come_back_in_openais_shape_and_fail_the_job(handler, route, body, status,
                                                            message):
    out = call(handler, route, body)
    assert len(out) == 1 and set(out[0]) == {"error"}, out
    error = out[0]["error"]
    assert {"message", "type", "code"} <= set(error) and error["code"] == status, error
    assert message in error["message"], error
    assert "Traceback" not in error["message"] and 'File "' not in error["message"]


def test_an_unknown_field_next_to_the_route_is_refused(handler):
    job_input = {"openai_route": "/v1/models", "prompt": "hi"}
    out = handler.run(handler_module.collect(handler, job_input))
    assert out[0]["error"]["code"] == 400 and "input.prompt" in out[0]["error"]["message"]


def test_an_unexpected_error_is_logged_and_the_client_gets_one_line_with_the_job_id(
        handler, monkeypatch, capfd):
    serving = handler.run(vllm_app.state()).openai_serving_chat

    async def explode(request, raw_request):
        raise RuntimeError("kaboom in /secret/worker/path.py")

    monkeypatch.setattr(serving, "create_chat_completion", explode)
    out = call(handler, "/v1/chat/completions", {"model": NAME, "messages": HI}, job_id="j-7")
    assert out == [{"error": {"message": "job j-7 failed with an internal error; the worker's "
                                         "log has the details",
                              "type": "InternalServerError", "param": None, "code": 500}}]
    log = capfd.readouterr().err
    assert "job j-7 failed unexpectedly" in log and "kaboom" in log


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "whole answer"])
def test_cancelling_a_job_aborts_its_vllm_requests(handler, stream):
    """Streaming: the cancel lands while a chunk is posted. A whole answer: while vLLM is
    still making it, before vLLM's app has answered anything."""
    engine = vllm_engine.engine()

    # Drive the generator from a task that gets cancelled, as the SDK does.
    async def as_sdk():
        chunks = []

        async def consume():
            async for chunk in handler.job({"id": "gone", "input": {
                    "openai_route": "/v1/completions",
                    "openai_input": {"model": NAME, "prompt": "hi", "n": 2, "max_tokens": 200,
                                     "min_tokens": 200, "stream": stream}}}):
                chunks.append(chunk)
                await asyncio.sleep(60)  # "posting" the chunk when the cancel lands

        task = asyncio.ensure_future(consume())
        while not (chunks if stream else
                   engine.output_processor.get_num_unfinished_requests() >= 2):
            await asyncio.sleep(0.05)
        before = engine.output_processor.get_num_unfinished_requests()
        task.cancel()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if engine.output_processor.get_num_unfinished_requests() == 0:
                break
        return before, engine.output_processor.get_num_unfinished_requests()

    before, after = handler.run(as_sdk())
    assert before >= 2 and after == 0, (before, after)


def test_a_handlers_chat_messages_hook_reshapes_the_chat_route(handler):
    """serve(handler, chat_messages=...) applies the handler's prompt change to the OpenAI
    route's chat requests: here a system prompt, which the prompt's token count shows."""
    system = {"role": "system", "content": "You answer in exactly one short sentence."}
    hooked = job_function(handler.handler, chat_messages=lambda messages: [system, *messages])
    body = {"model": NAME, "messages": HI, "max_tokens": 4}

    async def both():
        plain = await handler_module.collect(handler, {"openai_route": "/v1/chat/completions",
                                                       "openai_input": body})
        with_hook = [chunk async for chunk in hooked({"id": "hooked", "input": {
            "openai_route": "/v1/chat/completions", "openai_input": body}})]
        return plain, with_hook

    plain, with_hook = handler.run(both())
    assert one_body(with_hook)["usage"]["prompt_tokens"] > \
        one_body(plain)["usage"]["prompt_tokens"]
    # The same as sending the system message: the hook is applied once, before vLLM's layer.
    sent = one_body(call(handler, "/v1/chat/completions", {**body, "messages": [system, *HI]}))
    assert sent["usage"]["prompt_tokens"] == one_body(with_hook)["usage"]["prompt_tokens"]


def test_any_route_of_vllm_serve_through_the_generic_input(handler):
    """{"route", "body", "method"}: the official worker's input reaches vLLM's routes outside
    /v1, answered by `vllm serve`'s own app."""
    def route(job_input):
        return handler.run(handler_module.collect(handler, job_input))

    tokens = one_body(route({"route": "/tokenize", "body": {"model": NAME, "prompt": "hi"}}))
    assert tokens["count"] == len(tokens["tokens"]) > 0, tokens
    text = one_body(route({"route": "/detokenize", "method": "POST",
                           "body": {"model": NAME, "tokens": tokens["tokens"]}}))
    assert text["prompt"].endswith("hi"), text
    assert one_body(route({"route": "/v1/models"}))["data"][0]["id"] == NAME  # no body: a GET
    out = route({"route": "/tokenize", "body": [1]})
    assert out[0]["error"]["code"] == 400 and "input.body must be a JSON object" in \
        out[0]["error"]["message"], out
    out = route({"route": "/tokenize", "method": "PATCH", "body": {"prompt": "x"}})
    assert out[0]["error"]["code"] == 400 and "input.method" in out[0]["error"]["message"]


def test_a_handlers_own_route_field_stays_the_handlers():
    from llmkit.runtime.openai_route import is_openai_job

    assert is_openai_job({"route": "/tokenize", "body": {}})
    assert not is_openai_job({"prompt": "hi", "route": "/tokenize"})  # a handler's field
    assert not is_openai_job({"route": "north"})
