"""A LoRA adapter served by the handler on vLLM's CPU build, set up by engine arguments alone.

The adapter is made here with peft for the tiny test model, with random (non-zero) weights so
that its greedy answer differs from the base model's.
"""

from __future__ import annotations

import pytest

from llmkit import handler_module

pytestmark = pytest.mark.engine
PROMPT = {"prompt": "The quick brown fox", "max_tokens": 16, "min_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)  # random B: the adapter changes the answer
    dest = tmp_path_factory.mktemp("tiny-lora")
    get_peft_model(base, config).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def handler(handler_path, tiny_model_dir, lora_dir):
    with handler_module.running(handler_path, "handler_lora_under_test",
                                MODEL=str(tiny_model_dir), MAX_MODEL_LEN="256",
                                ENABLE_LORA="true", MAX_LORA_RANK="8",
                                LORA_MODULES=f"tiny-lora={lora_dir}") as module:
        yield module


def call(handler, route, body=None):
    job_input = {"openai_route": route, **({"openai_input": body} if body else {})}
    return handler.run(handler_module.collect(handler, job_input, "lora"))


def test_the_adapter_is_a_model_of_its_own_on_the_openai_route(handler, tiny_model_dir):
    models = call(handler, "/v1/models")[0]["data"]
    assert [m["id"] for m in models] == [tiny_model_dir.name, "tiny-lora"]
    base = call(handler, "/v1/completions", {"model": tiny_model_dir.name, **PROMPT})[0]
    adapted = call(handler, "/v1/completions", {"model": "tiny-lora", **PROMPT})[0]
    assert base["usage"]["completion_tokens"] == adapted["usage"]["completion_tokens"] == 16
    assert adapted["choices"][0]["text"] != base["choices"][0]["text"]
