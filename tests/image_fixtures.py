"""Fixtures for the kit's CPU image: one build per session, and serverless containers of
it working a local endpoint's queue.

Loaded with ``pytest_plugins = ["image_fixtures"]``. tests/test_image.py checks the image
itself; the host's functional suites reach a container of it through ``served``
(endpoint_fixtures.py), so the image is checked by the same tests as the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import image_harness as h
import pytest

from llmkit.endpoint.harness import EndpointProcess
from llmkit.paths import REPO_ROOT

IMAGE = "llmkit-test/kit"
MODEL = "SmolLM2-135M-Instruct"
TAG = f"{MODEL}-cpu"                       # `make image DEVICE=cpu`'s tag
BASE = f"{IMAGE}:{TAG}"
# A dummy gated-model token: it must end up in no layer, history or config.
DUMMY_TOKEN = "hf_llmkitDummySecret7f3a9c01e5d2"
SHM = "--shm-size=1g"                       # vLLM needs more than Docker's 64 MiB
FIGURES = REPO_ROOT / "build" / "image-figures.json"    # ignored by git
TESTS_JSON = json.loads((REPO_ROOT / ".runpod" / "tests.json").read_text())
# Where a container finds a host folder the tests mount into it.
IN_CONTAINER = Path("/test-mounts")

# Marks for a test that needs the image: it builds it (minutes on 2 cores, the first
# time), and it skips where no Docker engine answers.
NEEDS_IMAGE = [pytest.mark.image, pytest.mark.timeout(3600),
               pytest.mark.skipif(h.engine_problem() is not None,
                                  reason=f"image tests: {h.engine_problem()}")]

figures: dict = {}
build_logs: dict[str, str] = {}


def record(**values) -> None:
    """Measured figures, printed and kept in build/image-figures.json for docs/IMAGE.md."""
    figures.update(values)
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2))


def make(*args: str, cwd: Path = REPO_ROOT, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "HF_TOKEN", "DEVICE")}
    return subprocess.run(["make", "--no-print-directory", *args, f"DOCKER={h.DOCKER}"],
                          cwd=cwd, env={**env, "DOCKER_BUILDKIT": "1"}, capture_output=True,
                          text=True, timeout=timeout)


def build_flags() -> str:
    # --network host: the build reaches the wheel server on 127.0.0.1.
    return shlex.join(["--network", "host", *h.stand_in_build_args()])


@pytest.fixture(scope="session")
def base_image(tmp_path_factory) -> str:
    """`make image DEVICE=cpu` with the embedded model and a dummy HF_TOKEN secret."""
    token = tmp_path_factory.mktemp("secret") / "hf_token"
    token.write_text(DUMMY_TOKEN)
    start = time.monotonic()
    result = make("image", "DEVICE=cpu", f"IMAGE={IMAGE}", f"MODEL={MODEL}",
                  f"HF_TOKEN_FILE={token}", f"BUILD_FLAGS={build_flags()}")
    seconds = time.monotonic() - start
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]
    assert f"--secret id=HF_TOKEN,src={token}" in log
    build_logs[BASE] = log
    cached = len(re.findall(r"^#\d+ CACHED$", log, re.M))
    layers = h.layers(BASE)
    record(base_build_s=round(seconds), base_build_cached_steps=cached,
           base_size=h.image_size(BASE),
           base_layers=[[size, h.short_step(step)] for size, step in layers if size])
    print(h.report(h.Build(BASE, seconds, log, layers)), f"\n({cached} steps from cache)")
    return BASE


# --- serverless containers on a local endpoint's queue ---------------------------------

def worker_env(endpoint: EndpointProcess) -> dict[str, str]:
    """The worker environment the endpoint prints for a worker started elsewhere."""
    line = endpoint.wait_for_log(r"worker env: (.*)").group(1)
    return dict(item.split("=", 1) for item in shlex.split(line))


def serverless_container(image: str, endpoint: EndpointProcess, *run_args: str,
                         **env) -> h.Container:
    config_env = {e["key"]: e["value"] for e in TESTS_JSON["config"]["env"]}
    return h.Container(image, "--network", "host", *run_args,
                       env={**worker_env(endpoint), **config_env, **env})


def wait_worker(endpoint: EndpointProcess, container: h.Container, timeout: float = 900) -> float:
    """Seconds from `docker run` until the worker polls the queue."""
    deadline = time.monotonic() + timeout
    while True:
        workers = endpoint.health()["workers"]
        if workers["idle"] + workers["running"] >= 1:
            return time.monotonic() - container.started
        assert container.running(), f"the worker exited\n{container.logs()[-5000:]}"
        assert time.monotonic() < deadline, f"no worker\n{container.logs()[-5000:]}"
        time.sleep(0.2)


def wait_no_worker(endpoint: EndpointProcess, timeout: float = 60) -> None:
    """Until no worker polls (a removed container's worker is then counted as unhealthy)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = endpoint.health()["workers"]
        if not workers["idle"] + workers["running"]:
            return
        assert time.monotonic() < deadline, workers
        time.sleep(0.5)


def mount(host_dir: Path) -> tuple[list[str], str]:
    """`docker run` arguments that mount ``host_dir`` read-only, and its path inside."""
    inside = IN_CONTAINER / host_dir.name
    return ["-v", f"{host_dir}:{inside}:ro"], str(inside)


def mount_model(model_dir: Path) -> tuple[list[str], dict[str, str]]:
    """`docker run` arguments and settings that serve a host model folder instead of the
    baked one, under the name the host gives it (the image's MODEL_ID names its own)."""
    args, inside = mount(model_dir)
    return args, {"MODEL": inside, "MODEL_ID": model_dir.name}


@contextlib.contextmanager
def container_endpoint(tmp_path_factory, image: str, name: str, settings: dict[str, str],
                       mounts: list[str], **endpoint_args):
    """A queue-only local endpoint worked by one serverless container of ``image``, which
    gets ``settings`` as its environment. The endpoint's ``container`` is that container."""
    log = tmp_path_factory.mktemp(f"{name}-endpoint") / "endpoint.log"
    with EndpointProcess(workers=0, log_path=log, **endpoint_args) as endpoint:
        endpoint.container = serverless_container(image, endpoint, SHM, *mounts, **settings)
        try:
            cold = wait_worker(endpoint, endpoint.container)
            print(f"{name}: the container's worker polls {cold:.1f} s after docker run")
            yield endpoint
        finally:
            endpoint.container.remove()
