"""A LoRA adapter served by the handler on vLLM's CPU build, set up by engine arguments alone:
in this process, and in a container of the kit's CPU image.

The adapter is made here with peft for the tiny test model, with random (non-zero) weights so
that its greedy answer differs from the base model's.
"""

from __future__ import annotations

import image_fixtures
import pytest

from llmkit import handler_module

pytest_plugins = ["image_fixtures"]
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


# Engine arguments by their variables; the adapter is named in LORA_MODULES.
SETTINGS = {"MAX_MODEL_LEN": "256", "ENABLE_LORA": "true", "MAX_LORA_RANK": "8"}


@pytest.fixture(scope="module")
def in_process(handler_path, tiny_model_dir, lora_dir):
    with handler_module.running(handler_path, "handler_lora_under_test",
                                MODEL=str(tiny_model_dir), LORA_MODULES=f"tiny-lora={lora_dir}",
                                **SETTINGS) as module:
        yield lambda job_input: module.run(handler_module.collect(module, job_input, "lora"))


@pytest.fixture(scope="module")
def in_container(tmp_path_factory, base_image, tiny_model_dir, lora_dir):
    """The same settings, in a serverless container of the kit's CPU image that mounts
    the model and the adapter; jobs go through a local endpoint's queue."""
    model_mount, model = image_fixtures.mount_model(tiny_model_dir)
    lora_mount, lora = image_fixtures.mount(lora_dir)
    settings = {**SETTINGS, **model, "LORA_MODULES": f"tiny-lora={lora}"}
    with image_fixtures.container_endpoint(tmp_path_factory, base_image, "lora", settings,
                                           model_mount + lora_mount) as endpoint:
        def run(job_input):
            state = endpoint.wait_final(endpoint.run(job_input), timeout=300)
            if state["status"] == "FAILED":  # as the handler yields it in process
                return [{"error": state["error"]}]
            assert state["status"] == "COMPLETED", state
            return state["output"]
        yield run


@pytest.fixture(params=["in-process", pytest.param("container",
                                                   marks=image_fixtures.NEEDS_IMAGE)])
def run_job(request):
    """A job's output chunks, from the handler in this process or in the image."""
    return request.getfixturevalue("in_process" if request.param == "in-process"
                                   else "in_container")


def call(run_job, route, body=None):
    return run_job({"openai_route": route, **({"openai_input": body} if body else {})})


def test_the_adapter_is_a_model_of_its_own_on_the_openai_route(run_job, tiny_model_dir):
    models = call(run_job, "/v1/models")[0]["data"]
    assert [m["id"] for m in models] == [tiny_model_dir.name, "tiny-lora"]
    base = call(run_job, "/v1/completions", {"model": tiny_model_dir.name, **PROMPT})[0]
    adapted = call(run_job, "/v1/completions", {"model": "tiny-lora", **PROMPT})[0]
    assert base["usage"]["completion_tokens"] == adapted["usage"]["completion_tokens"] == 16
    assert adapted["choices"][0]["text"] != base["choices"][0]["text"]


def test_the_native_api_picks_the_adapter_by_name(run_job):
    """`input.lora` names one of LORA_MODULES: the same adapter the OpenAI route serves."""
    job = {"prompt": "The quick brown fox", "sampling_params": {
        "max_tokens": 16, "min_tokens": 16, "temperature": 0}}
    base = "".join(c["text"] for c in run_job(job))
    adapted = "".join(c["text"] for c in run_job({**job, "lora": "tiny-lora"}))
    # The random adapter may favour tokens that decode to nothing: only a difference counts.
    assert base and adapted != base
    [again] = run_job({**job, "lora": "tiny-lora"})
    assert again["text"] == adapted, "greedy: the same"
    assert again["usage"]["completion_tokens"] == 16
    (failed,) = run_job({**job, "lora": "no-such-adapter"})
    assert failed == {"error": "input.lora: no LoRA adapter named 'no-such-adapter'; this "
                               "worker serves tiny-lora"}
