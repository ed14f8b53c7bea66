"""The model-less CPU image (`make image DEVICE=cpu MODEL=`) serving Runpod's cached models:
MODEL=org/name, found under /runpod-volume/huggingface-cache/hub, where an endpoint's
Model field puts it.

The cache is a real one (hub_cache.py: huggingface_hub's snapshot_download from a local
stand-in for the hub) holding the kit's embedded model at two commits, mounted read-only
as Runpod mounts it. A container start costs about a minute on 2 cores, so there are two:
one that serves, and one without a cache, which must exit at once with the message.
"""

from __future__ import annotations

import json
import re
import time

import hub_cache
import image_harness as h
import pytest
from image_fixtures import (
    BASE,
    FIGURES,
    IMAGE,
    NEEDS_IMAGE,
    SHM,
    build_flags,
    figures,
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

CACHED = f"{IMAGE}:cached-cpu"             # `make image DEVICE=cpu MODEL=`'s tag
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
OLD, NEW = hub_cache.COMMITS
HUB = "/runpod-volume/huggingface-cache/hub"
REPO_DIR = f"{HUB}/models--HuggingFaceTB--SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def cached_image() -> str:
    """The model-less image, built with base_image's flags: its system and pip layers come
    from the baked image's build cache."""
    start = time.monotonic()
    result = make("image", "DEVICE=cpu", f"IMAGE={IMAGE}", "MODEL=",
                  f"BUILD_FLAGS={build_flags()}")
    seconds = time.monotonic() - start
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]
    assert f"{CACHED} (cpu) with no model" in log, log[:2000]
    assert ("MODEL is empty: no model baked in" in log
            or re.search(r"^#\d+ \[[^\]]*\] RUN --mount=type=secret.*\n#\d+ CACHED", log, re.M))
    cached_steps = len(re.findall(r"^#\d+ CACHED$", log, re.M))
    size = h.image_size(CACHED)
    baked = h.image_size(BASE) if h.image_exists(BASE) else None
    record(cached_build_s=round(seconds), cached_build_cached_steps=cached_steps,
           cached_size=size, **({"cached_vs_baked_size": [size, baked]} if baked else {}))
    print(h.report(h.Build(CACHED, seconds, log, h.layers(CACHED))),
          f"\n({cached_steps} steps from cache)"
          + (f"; the baked {BASE} is {h.mb(baked)}" if baked else ""))
    return CACHED


def test_the_image_has_no_model_and_an_empty_model_setting(cached_image):
    out = h.docker("run", "--rm", "--entrypoint", "bash", cached_image, "-c",
                   'echo "MODEL=[$MODEL] MODEL_ID=[$MODEL_ID] HF_HUB_OFFLINE=$HF_HUB_OFFLINE"; '
                   "ls /models 2>&1; ls /opt").stdout
    assert "MODEL=[] MODEL_ID=[] HF_HUB_OFFLINE=1\n" in out, out
    assert "No such file or directory" in out and "llmkit-download" not in out, out
    history = h.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                       cached_image).stdout
    assert "llmkit.models download" in history  # the same step, which did nothing
    # No MODEL on a serverless endpoint: start.sh stops before the worker (no vLLM import).
    started = time.monotonic()
    result = h.docker("run", "--rm", "-e", "MODE_TO_RUN=serverless", cached_image, check=False)
    took = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert "[start.sh] error: MODEL is not set: this image has no model baked in: set " \
           "MODEL=org/name on the endpoint" in result.stderr, result.stderr
    assert took < 30, took


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    log = tmp_path_factory.mktemp("cached-endpoint") / "endpoint.log"
    with EndpointProcess(workers=0, endpoint_id="cached", log_path=log) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A Runpod volume whose model cache holds REPO at two commits (NEW is the newer)."""
    root = tmp_path_factory.mktemp("runpod-volume")
    hub_cache.make_cache(root / "huggingface-cache" / "hub", REPO, models.prepare_default())
    return root


def test_a_serverless_container_serves_the_newest_cached_snapshot(cached_image, queue,
                                                                  volume):
    previous = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    container = serverless_container(cached_image, queue, SHM,
                                     "-v", f"{volume}:/runpod-volume:ro", MODEL=REPO)
    try:
        cold = wait_worker(queue, container)
        hub_cache.assert_serves(queue, REPO)
        logs = container.logs()
        assert f"MODEL={REPO}: cached snapshot {NEW} ({REPO_DIR}/snapshots/{NEW})" in logs, \
            logs[-5000:]
        assert "Traceback" not in logs, logs[-5000:]
    finally:
        container.remove()
        wait_no_worker(queue)
    baked = figures.get("container_cold_start_s") or previous.get("container_cold_start_s")
    record(cached_container_cold_start_s=round(cold, 1))
    print(f"cached-model container: the worker polls {cold:.1f} s after docker run"
          + (f" (the baked image's: {baked} s)" if baked else ""))


def test_a_container_without_the_cached_model_exits_with_the_path_and_the_setting(
        cached_image, queue):
    container = serverless_container(cached_image, queue, SHM, MODEL=REPO)
    try:
        code = container.wait_exit(timeout=300)
        took = time.monotonic() - container.started
        logs = container.logs()
        print(f"no cached model: exit {code} {took:.1f} s after docker run; last lines:\n"
              + "\n".join(logs.splitlines()[-3:]))
        record(cached_missing_exit_s=round(took, 1))
        assert code != 0, logs[-3000:]
        assert (f"MODEL='{REPO}' is not in Runpod's model cache: {REPO_DIR} has no snapshot "
                f"(no model cache at {HUB}). Set the endpoint's Model field (cached models) "
                f"to {REPO}") in logs, logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]
        assert took < 120, logs[-3000:]
    finally:
        container.remove()
