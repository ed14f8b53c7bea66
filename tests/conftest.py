"""Shared fixtures: the tiny random model, and paths into the repo; and the markers that
split the suite. `make test-fast` runs ``-m "not engine and not vllm and not service and not
slow"``: the tests that need no vLLM and no network service, in under a minute. `make test`
runs them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xdist_groups
from shared_engine import IN_PROCESS_SETTINGS

from llmkit import tiny_model
from llmkit.paths import REPO_ROOT

# Fixture modules the tests also import by name: rewrite their asserts, as pytest does
# for test modules (this must come before any of them is imported).
pytest.register_assert_rewrite("endpoint_fixtures", "image_fixtures")

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Fixtures that start something, and the marker each gives the tests that use them (directly
# or through another fixture), so the fast set leaves those tests out without a mark on each.
# A test that starts such a thing itself carries the marker: @pytest.mark.service.
STARTS = {
    # a real vLLM engine
    "live_endpoint": "engine",
    "plain_in_process": "engine",
    # the local endpoint (llmkit.endpoint) and its workers
    "queue_ep": "service",
    "queue_endpoint": "service",
    "sdk_endpoint": "service",
    "fake_handler": "service",       # an SDK worker for an endpoint
    "endpoint": "service",           # test_start_sh: the endpoint start.sh's worker talks to
    # scripts/start.sh in pod mode: sshd and Jupyter Lab (and Chromium on top)
    "pod": "service",
    "jupyter": "service",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in sorted({STARTS[f] for f in getattr(item, "fixturenames", ()) if f in STARTS}):
            item.add_marker(marker)
        if item.get_closest_marker("image"):  # Docker builds and containers: a service too
            item.add_marker("service")
    xdist_groups.assign(config, items)


def pytest_configure(config):
    # On xdist's controller only (its workers have `workerinput`): where the time went.
    if config.getoption("dist", "no") == "loadgroup" and not hasattr(config, "workerinput"):
        config.pluginmanager.register(xdist_groups.Timeline(), "xdist-timeline")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def handler_path() -> Path:
    """The committed, exported handler.py (tests check it is in sync with the notebook)."""
    return REPO_ROOT / "build" / "handler.py"


@pytest.fixture(scope="session")
def plain_handler() -> Path:
    """A fixture handler in the default handler's shape (tests/handlers/plain.py): the
    runtime's tests serve it, so that a user's change to the notebook breaks none of them."""
    return Path(__file__).with_name("handlers") / "plain.py"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama (head_dim 64, vocab ~512), generated once into the kit's cache."""
    return tiny_model.build()


@pytest.fixture(scope="session")
def plain_in_process(tiny_model_dir, plain_handler):
    """The fixture handler imported into this process, on the tiny model with
    ``IN_PROCESS_SETTINGS``: one engine shared by the runtime's modules (test_runtime_engine,
    test_runtime_openai), since an engine start takes most of a minute on 2 cores."""
    from llmkit import handler_module
    from llmkit.runtime import vllm_engine

    with handler_module.running(plain_handler, "plain_handler", MODEL=str(tiny_model_dir),
                                **IN_PROCESS_SETTINGS) as module:
        module.settings = vllm_engine.settings()
        yield module


@pytest.fixture(scope="module")
def in_process(plain_in_process):
    """``plain_in_process``, checked to still run its own engine: a module that starts
    another one in this process (handler_module.running) replaces it, and must not share."""
    from llmkit.runtime import vllm_engine

    assert vllm_engine.running() and vllm_engine.settings() is plain_in_process.settings, \
        "another module replaced the shared in-process engine"
    return plain_in_process
