"""One request of each OpenAI-route feature, for the reliability checks on the host and in
the image: a legal request may fail with the client's own 4xx, but it must never end the
worker. (In the CPU image a single `logprobs` request once killed vLLM's engine: torch's
Inductor found no C++ compiler.)"""

from __future__ import annotations

import openai

HI = [{"role": "user", "content": "Hello there"}]
SCHEMA = {"type": "object", "required": ["answer"], "additionalProperties": False,
          "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def features(model: str) -> list[tuple[str, str, dict]]:
    """(name, "chat", "text" or "responses", the request's arguments): every feature the
    host tests try."""
    chat = {"model": model, "messages": HI, "max_tokens": 8}
    text = {"model": model, "prompt": "Once upon a time", "max_tokens": 8}
    return [
        ("chat", "chat", chat),
        ("text", "text", text),
        ("chat stream", "chat", {**chat, "stream": True}),
        ("text stream", "text", {**text, "stream": True}),
        ("chat logprobs", "chat", {**chat, "logprobs": True, "top_logprobs": 2}),
        ("chat logprobs stream", "chat",
         {**chat, "logprobs": True, "top_logprobs": 2, "stream": True}),
        ("text logprobs", "text", {**text, "logprobs": 3}),
        ("text echo", "text", {**text, "echo": True, "logprobs": 1}),
        ("prompt logprobs", "text", {**text, "extra_body": {"prompt_logprobs": 2}}),
        ("n=2", "chat", {**chat, "n": 2, "seed": 7}),
        ("seed and top_k", "chat", {**chat, "seed": 3, "extra_body": {"top_k": 5}}),
        ("json schema", "chat", {**chat, "max_tokens": 30, "response_format": {
            "type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}}),
        ("json object", "chat", {**chat, "response_format": {"type": "json_object"}}),
        ("tool, named", "chat", {**chat, "tools": [TOOL], "tool_choice": {
            "type": "function", "function": {"name": "get_weather"}}}),
        ("tool, required", "chat", {**chat, "tools": [TOOL], "tool_choice": "required"}),
        ("tool, auto", "chat", {**chat, "tools": [TOOL], "tool_choice": "auto"}),
        ("stop and penalties", "chat", {**chat, "stop": ["."], "presence_penalty": 1.5,
                                        "frequency_penalty": 0.5, "logit_bias": {"5": 10}}),
        ("bad temperature", "chat", {**chat, "temperature": -1}),
        ("over-long prompt", "text", {**text, "prompt": "fox dog " * 5000}),
        ("unknown model", "chat", {**chat, "model": "no-such-model"}),
        ("responses", "responses", {"model": model, "input": "Hi", "max_output_tokens": 8}),
        ("responses stream", "responses",
         {"model": model, "input": "Hi", "max_output_tokens": 8, "stream": True}),
    ]


def send_each(client: openai.OpenAI, model: str) -> dict[str, str]:
    """Send every feature once; name -> "ok" or the client error's status. A server error
    (5xx) or a broken connection fails at once, naming the feature."""
    outcomes = {}
    for name, kind, args in features(model):
        create = {"chat": client.chat.completions.create, "text": client.completions.create,
                  "responses": client.responses.create}[kind]
        try:
            reply = create(**args)
            if args.get("stream"):
                reply = list(reply)
                assert reply, name
            outcomes[name] = "ok"
        except openai.APIStatusError as err:
            assert err.status_code < 500, (name, err.status_code, err.body)
            outcomes[name] = str(err.status_code)
    return outcomes


def check_outcomes(outcomes: dict[str, str]) -> None:
    """What a healthy worker answers: the legal requests succeed (tools may be refused
    when the worker runs without a tool parser), the bad ones get the client's 4xx."""
    refused = {"bad temperature": "400", "over-long prompt": "400", "unknown model": "404"}
    for name, outcome in outcomes.items():
        if name in refused:
            assert outcome == refused[name], (name, outcome)
        elif name.startswith("tool"):
            assert outcome in ("ok", "400"), (name, outcome)
        else:
            assert outcome == "ok", (name, outcome)
