"""The recipes (notebooks/recipes/): each exported, then served by a real worker (vLLM, the
tiny model) through the local endpoint, and its changed behaviour checked from a client. One
reloading worker serves them in turn, on one engine."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import openai
import pytest

from llmkit import export
from llmkit.endpoint.harness import EndpointProcess
from llmkit.runtime.reload import digest

pytestmark = pytest.mark.engine
RECIPES = ("system_prompt", "word_count", "context_lookup", "json_output")
MAX_MODEL_LEN = 256
# The tiny random model would pad JSON with whitespace up to max_tokens.
JSON_SETTINGS = {"STRUCTURED_OUTPUTS_CONFIG": '{"backend": "xgrammar", '
                                              '"disable_any_whitespace": true}'}


class Recipes:
    """One worker, started as `make serve` starts it (--reload), that serves each recipe's
    exported handler.py in turn on the same engine, as a user trying the recipes would:
    ``recipes[name]`` installs that recipe and waits until the worker serves it."""

    def __init__(self, endpoint: EndpointProcess, handler: Path, repo_root: Path):
        self.endpoint, self.handler, self.repo_root = endpoint, handler, repo_root

    def __getitem__(self, name: str) -> EndpointProcess:
        text = export.export(self.repo_root / "notebooks" / "recipes" / f"{name}.ipynb")
        temporary = self.handler.with_name(".handler.py.tmp")  # as export-handler writes it
        temporary.write_text(text)
        temporary.replace(self.handler)
        sha, deadline = digest(text.encode()), time.monotonic() + 60
        while not self._serves(sha):
            assert time.monotonic() < deadline, f"{name} not served: {self.endpoint.workers()}"
            time.sleep(0.1)
        self.endpoint.handler_text = text
        return self.endpoint

    def _serves(self, sha: str) -> bool:
        report = next((w["handler"] for w in self.endpoint.workers() if w["state"] == "ready"),
                      None) or {}
        assert not report.get("lastReloadFailed"), report
        return report.get("sha256") == sha


@pytest.fixture(scope="module")
def recipes(repo_root, tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("recipes")
    handler = folder / "handler.py"
    handler.write_text(export.export(repo_root / "notebooks" / "recipes" / f"{RECIPES[0]}.ipynb"))
    with EndpointProcess(workers=1, concurrency=2, model=tiny_model_dir, endpoint_id="recipes",
                         handler=handler, args=["--reload"], log_path=folder / "endpoint.log",
                         env={"MAX_MODEL_LEN": str(MAX_MODEL_LEN), **JSON_SETTINGS}) as endpoint:
        endpoint.wait_workers(timeout=600)
        yield Recipes(endpoint, handler, repo_root)


def output(endpoint, job_input):
    state = endpoint.wait_final(endpoint.run(job_input), timeout=300)
    assert state["status"] == "COMPLETED", state
    return state["output"]


def error(endpoint, job_input):
    state = endpoint.wait_final(endpoint.run(job_input), timeout=300)
    assert state["status"] == "FAILED", state
    return state["error"]


def constant(handler_text, name):
    """A module-level constant of a handler.py, as written."""
    tree = ast.parse(handler_text)
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == name)
    return ast.literal_eval(node.value)


def chat_tokens(tiny_model_dir, messages):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_system_prompt_reaches_native_jobs_and_the_openai_chat_route(recipes, tiny_model_dir):
    endpoint = recipes["system_prompt"]
    system = {"role": "system", "content": constant(endpoint.handler_text, "SYSTEM_PROMPT")}
    # Too long a prompt: the error counts the tokens vLLM would have been given.
    long = "fox " * 300
    tokens = chat_tokens(tiny_model_dir, [system, {"role": "user", "content": long}])
    assert error(endpoint, {"prompt": long}) == \
        f"input.messages is {tokens} tokens; MAX_MODEL_LEN={MAX_MODEL_LEN} leaves no room " \
        "to answer"
    assert output(endpoint, {"prompt": "Hi", "sampling_params": {"max_tokens": 4}})[0]["text"]
    # The OpenAI route: the worker applied the recipe's chat_messages hook.
    client = openai.OpenAI(base_url=f"{endpoint.base}/{endpoint.endpoint_id}/openai/v1",
                           api_key=endpoint.api_key)
    hi = [{"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model=tiny_model_dir.name, messages=hi, max_tokens=4)
    assert reply.usage.prompt_tokens == chat_tokens(tiny_model_dir, [system, *hi])


@pytest.mark.parametrize("answer_type", ["stream", "normal"])
def test_word_count_follows_the_text(recipes, answer_type):
    chunks = output(recipes["word_count"], {
        "prompt": "The quick brown fox", "answerType": answer_type,
        "sampling_params": {"max_tokens": 24, "min_tokens": 24, "temperature": 0}})
    *texts, last = chunks
    text = "".join(c["text"] for c in texts)
    assert texts and all(set(c) == {"text"} for c in texts[:-1]), chunks
    assert texts[-1]["usage"]["completion_tokens"] == 24, chunks
    assert last == {"word_count": len(text.split())}
    assert len(texts) == 1 or answer_type == "stream"


def test_context_lookup_takes_its_own_field_and_fails_with_its_own_message(recipes,
                                                                          tiny_model_dir):
    from transformers import AutoTokenizer

    endpoint = recipes["context_lookup"]
    ask = {"prompt": "Which country is it in?", "sampling_params": {"max_tokens": 4}}
    assert output(endpoint, {**ask, "topic": "paris"})[0]["text"]
    assert error(endpoint, {**ask, "topic": "mars"}) == \
        "input.topic must be one of paris, rome, got 'mars'"
    assert error(endpoint, {**ask, "topic": 7}) == "input.topic must be a string, got int"
    assert error(endpoint, ask) == "input.topic must be one of paris, rome, got None"
    assert error(endpoint, {**ask, "topik": "paris"}).startswith("unknown field input.topik")
    # The fact goes in front of the prompt: too long a prompt's error counts its tokens.
    long = "fox " * 300
    fact = constant(endpoint.handler_text, "FACTS")["rome"]
    tokens = len(AutoTokenizer.from_pretrained(tiny_model_dir).encode(f"{fact}\n\n{long}"))
    assert error(endpoint, {"prompt": long, "topic": "rome"}) == \
        f"input.prompt is {tokens} tokens; MAX_MODEL_LEN={MAX_MODEL_LEN} leaves no room to answer"


def test_json_output_is_parsed_and_follows_the_schema(recipes):
    endpoint = recipes["json_output"]
    [answer] = output(endpoint, {"prompt": "I loved this film!",
                                 "sampling_params": {"max_tokens": 64, "temperature": 0}})
    assert set(answer) == {"text", "json", "usage", "finish_reason", "stop_reason"}
    assert answer["finish_reason"] == "stop"  # the schema closed: not cut off
    assert set(answer["json"]) == {"sentiment", "confident"}
    assert answer["json"]["sentiment"] in ("positive", "negative", "neutral")
    assert isinstance(answer["json"]["confident"], bool)
    assert error(endpoint, {"prompt": "I loved this film!",
                            "sampling_params": {"max_tokens": 2}}) == \
        "the answer's JSON was cut off: raise sampling_params.max_tokens"
