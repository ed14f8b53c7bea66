"""OpenAI's Responses API and Anthropic's Messages API on the OpenAI route, served by vLLM's
own classes for them (OpenAIServingResponses, AnthropicServingMessages) on the worker's
engine: the official `openai` and `anthropic` clients, by base URL alone, against the local
endpoint. Each test runs with the worker on the host and in a container of the CPU image.

The model is random (tiny test model): answers are checked by shape, and streamed text
against the whole greedy answer."""

from __future__ import annotations

import anthropic
import openai
import pytest

from llmkit.endpoint.harness import EndpointProcess

pytest_plugins = ["endpoint_fixtures"]
pytestmark = pytest.mark.engine
HI = [{"role": "user", "content": "Hello there"}]
GREEDY = {"temperature": 0}


@pytest.fixture
def oa(served: EndpointProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base}/{served.endpoint_id}/openai/v1",
                         api_key=served.api_key, max_retries=0, timeout=120)


@pytest.fixture
def claude(served: EndpointProcess) -> anthropic.Anthropic:
    # The client appends /v1/messages; auth_token sends `Authorization: Bearer <key>`, the
    # header Runpod's endpoints read.
    return anthropic.Anthropic(base_url=f"{served.base}/{served.endpoint_id}/openai",
                               auth_token=served.api_key, api_key=None, max_retries=0,
                               timeout=120)


@pytest.fixture
def model(oa) -> str:
    return oa.models.list().data[0].id


def test_responses_whole_and_streamed(oa, model):
    whole = oa.responses.create(model=model, input="Once upon a time", max_output_tokens=12,
                                **GREEDY)
    assert whole.object == "response" and whole.status in ("completed", "incomplete")
    assert whole.model == model and isinstance(whole.output_text, str)
    assert 1 <= whole.usage.output_tokens <= 12
    events = list(oa.responses.create(model=model, input="Once upon a time",
                                      max_output_tokens=12, stream=True, **GREEDY))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed",
                                                            "response.incomplete"), kinds
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == whole.output_text
    assert events[-1].response.output_text == whole.output_text


def test_responses_errors_are_the_openai_clients_own(oa, model):
    with pytest.raises(openai.BadRequestError) as bad:
        oa.responses.create(model=model, input="Hi", max_output_tokens=8, temperature=-1)
    assert bad.value.status_code == 400 and "temperature" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        oa.responses.create(model="no-such-model", input="Hi", max_output_tokens=8)


def test_messages_whole_and_streamed(claude, model):
    # The anthropic client (2.x) takes no temperature: it goes in the body, as vLLM reads it.
    whole = claude.messages.create(model=model, max_tokens=12, messages=HI, extra_body=GREEDY)
    assert whole.type == "message" and whole.role == "assistant" and whole.model == model
    assert whole.content and whole.content[0].type == "text"
    assert whole.stop_reason in ("max_tokens", "end_turn")
    assert 1 <= whole.usage.output_tokens <= 12 and whole.usage.input_tokens > 0
    with claude.messages.stream(model=model, max_tokens=12, messages=HI,
                                extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == whole.content[0].text == final.content[0].text


def test_messages_errors_are_the_anthropic_clients_own(claude, model, served):
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model=model, max_tokens=8, messages=HI,
                               extra_body={"temperature": -1})
    assert bad.value.status_code == 400
    body = bad.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "temperature" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert served.health()["workers"]["unhealthy"] == 0
