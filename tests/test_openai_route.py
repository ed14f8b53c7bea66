"""The OpenAI route end to end: the official `openai` client, by base_url alone, against
the local endpoint, whose real worker (the runpod SDK's loop around build/handler.py)
serves it with vLLM's own OpenAI layer on the real CPU engine (tiny random model). Each
test runs twice: with that worker on the host, and in a container of the kit's CPU image.

The model is random, so answers are checked by shape, and by agreement between two
ways of asking (streamed deltas against the whole answer, greedy)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from llmkit.endpoint.harness import EndpointProcess

pytest_plugins = ["endpoint_fixtures"]
pytestmark = pytest.mark.engine
HI = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def oa(served: EndpointProcess) -> openai.OpenAI:
    # The base URL and the key are all a user changes. No retries: one job per call.
    return openai.OpenAI(base_url=f"{served.base}/{served.endpoint_id}/openai/v1",
                         api_key=served.api_key, max_retries=0, timeout=120)


@pytest.fixture
def model(oa) -> str:
    return oa.models.list().data[0].id


def test_models_list_names_the_served_model(oa, tiny_model_dir):
    models = oa.models.list()
    # OPENAI_SERVED_MODEL_NAME_OVERRIDE is unset: the name is the model id, the folder's name.
    assert [m.id for m in models.data] == [tiny_model_dir.name]
    assert models.data[0].object == "model"


def test_chat_and_text_completions(oa, model):
    chat = oa.chat.completions.create(model=model, messages=HI, max_tokens=8)
    assert chat.object == "chat.completion" and chat.model == model
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str)
    assert 1 <= chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0
    text = oa.completions.create(model=model, prompt="Once upon a time", max_tokens=8,
                                 extra_body={"min_tokens": 8})
    assert text.object == "text_completion" and text.usage.completion_tokens == 8
    assert text.choices[0].text and text.choices[0].finish_reason == "length"


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_streamed_deltas_join_to_the_whole_greedy_answer(oa, model, kind):
    args = {"model": model, "max_tokens": 40, "temperature": 0,
            "extra_body": {"min_tokens": 40}}
    if kind == "chat":
        whole = oa.chat.completions.create(messages=HI, **args).choices[0].message.content
        chunks = list(oa.chat.completions.create(messages=HI, stream=True, **args))
        deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    else:
        whole = oa.completions.create(prompt="Once upon a time", **args).choices[0].text
        chunks = list(oa.completions.create(prompt="Once upon a time", stream=True, **args))
        deltas = [c.choices[0].text for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1, "the answer came in one piece"
    assert "".join(deltas) == whole


@pytest.fixture(scope="module")
def no_blanks(tiny_model_dir) -> dict[str, int]:
    """A logit_bias that bans the tokens that are only whitespace.

    A random model, allowed whitespace between JSON tokens, may never stop: with these
    banned, the schema alone decides the shape of a constrained answer."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    blank = {str(i): -100 for t, i in tokenizer.get_vocab().items()
             if not tokenizer.convert_tokens_to_string([t]).strip()}
    assert blank
    return blank


def test_json_schema_response_format_gives_valid_json(oa, model, no_blanks):
    schema = {"type": "object", "additionalProperties": False, "required": ["answer", "n"],
              "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                             "n": {"type": "integer", "minimum": 0, "maximum": 9}}}
    reply = oa.chat.completions.create(
        model=model, messages=HI, max_tokens=60, temperature=0, logit_bias=no_blanks,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": schema}})
    assert reply.choices[0].finish_reason == "stop", reply.choices[0]
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_n_choices_with_logprobs(oa, model):
    reply = oa.chat.completions.create(model=model, messages=HI, max_tokens=6, n=2, seed=7,
                                       logprobs=True, top_logprobs=2,
                                       extra_body={"min_tokens": 6})
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens == 12
    for choice in reply.choices:
        assert len(choice.logprobs.content) == 6
        for position in choice.logprobs.content:
            assert position.logprob <= 0 and len(position.top_logprobs) == 2
    text = oa.completions.create(model=model, prompt="Once", max_tokens=4, logprobs=3, seed=7,
                                 extra_body={"min_tokens": 4})
    logprobs = text.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 4
    assert len(logprobs.top_logprobs) == 4
    # The legacy API keys top_logprobs by token *text*: two ids that decode alike share a
    # key, so a position can hold fewer than 3. What it promises: the 3 best (and the
    # sampled token), as text -> logprob, each a log-probability.
    for top in logprobs.top_logprobs:
        assert 1 <= len(top) <= 4 and all(v <= 0 for v in top.values()), top


WEATHER = {"type": "object", "required": ["city"], "additionalProperties": False,
           "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}}
# "strict": vLLM 0.32 holds the arguments to the schema only then (or TOOL_STRICT_LEVEL).
TOOLS = [{"type": "function", "function": {"name": "get_weather", "strict": True,
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "strict": True, "parameters": {
             "type": "object", "properties": {}, "additionalProperties": False}}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def test_tool_calls_named_required_and_auto(oa, model, no_blanks):
    """The live worker runs with ENABLE_AUTO_TOOL_CHOICE=true and TOOL_CALL_PARSER=hermes. A
    named or "required" tool choice makes vLLM constrain the answer to a call of that tool,
    or of any tool, in the parser's format, so even a random model makes one."""
    # One call ("required" allows several: a random model would go on to max_tokens).
    args = {"model": model, "messages": HI, "max_tokens": 200, "temperature": 0,
            "tools": TOOLS, "parallel_tool_calls": False, "logit_bias": no_blanks}
    named = oa.chat.completions.create(tool_choice=NAMED, **args).choices[0]
    [call] = named.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    # Streamed, the same call arrives as deltas: its name first, then its arguments (as
    # the model wrote them; the whole answer re-serialises them).
    chunks = list(oa.chat.completions.create(tool_choice=NAMED, stream=True, **args))
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert deltas and deltas[0].function.name == "get_weather"
    streamed = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(streamed) == json.loads(call.function.arguments)

    required = oa.chat.completions.create(tool_choice="required", **args).choices[0]
    assert required.finish_reason == "tool_calls", required
    [call] = required.message.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER)
    # "auto": the model decides, in its own format (hermes: <tool_call> tags), which this
    # random model does not write: a plain answer, parsed without error.
    auto = oa.chat.completions.create(tool_choice="auto", **{**args, "max_tokens": 8})
    assert auto.choices[0].message.tool_calls in (None, [])
    assert isinstance(auto.choices[0].message.content, str)


def test_errors_are_the_clients_own_exceptions(oa, model, served):
    long_prompt = [{"role": "user", "content": "hello " * 10000}]  # MAX_MODEL_LEN is 8192
    cases = [
        (openai.NotFoundError, "The model `nope` does not exist",
         lambda: oa.chat.completions.create(model="nope", messages=HI)),
        (openai.NotFoundError, "The model `nope` does not exist",  # before any event
         lambda: oa.completions.create(model="nope", prompt="x", stream=True)),
        (openai.BadRequestError, "temperature",
         lambda: oa.chat.completions.create(model=model, messages=HI, temperature=-1)),
        (openai.BadRequestError, "maximum context length",
         lambda: oa.chat.completions.create(model=model, messages=long_prompt, max_tokens=4)),
    ]
    for kind, message, call in cases:
        with pytest.raises(kind, match=message) as err:
            call()
        assert err.value.body["code"] == err.value.status_code, err.value.body
        assert "Traceback" not in err.value.message and ".py" not in err.value.message
    # The worker keeps serving.
    assert oa.chat.completions.create(model=model, messages=HI, max_tokens=2).choices
    assert served.health()["workers"]["unhealthy"] == 0
