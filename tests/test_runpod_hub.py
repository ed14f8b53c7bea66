"""The Runpod Hub files (.runpod/hub.json, .runpod/tests.json), in the shape Runpod's own
workers use. The tests.json cases themselves run against the built image in
test_image.py."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from llmkit.paths import REPO_ROOT

HUB = json.loads((REPO_ROOT / ".runpod" / "hub.json").read_text())
TESTS = json.loads((REPO_ROOT / ".runpod" / "tests.json").read_text())
# What reads the environment: the worker's runtime (handler.py hands it the settings) and
# start.sh.
READERS = "".join(p.read_text() for p in [
    *(REPO_ROOT / "scripts" / "llmkit" / "runtime").glob("*.py"),
    REPO_ROOT / "scripts" / "start.sh"])
INPUT_TYPES = {"string", "number", "boolean", "huggingface"}


def test_hub_json_describes_a_serverless_listing():
    assert {"title", "description", "type", "category", "config"} <= set(HUB)
    assert HUB["type"] == "serverless" and HUB["category"] == "language"
    config = HUB["config"]
    assert config["runsOn"] in ("GPU", "CPU")
    assert isinstance(config["containerDiskInGb"], int) and config["gpuCount"] >= 1
    for preset in config.get("presets", []):
        assert preset["name"] and set(preset["defaults"]) <= {e["key"] for e in config["env"]}


@pytest.mark.vllm
def test_every_hub_setting_is_one_the_image_reads():
    """A knob in the Hub's form that nothing reads would silently do nothing. The handler
    reads the kit's own settings by name, and every vLLM engine argument by its UPPER_SNAKE
    name (vLLM's own list)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    engine_args = {f.name.upper() for f in dataclasses.fields(AsyncEngineArgs)}
    for entry in HUB["config"]["env"]:
        key, form = entry["key"], entry["input"]
        assert form["name"] and form["description"] and form["type"] in INPUT_TYPES, key
        assert key in engine_args or re.search(rf"\b{key}\b", READERS), \
            f"{key}: read by neither the runtime nor start.sh, and no vLLM engine argument"
        for option in form.get("options", []):
            assert {"label", "value"} <= set(option), key
    modes = next(e for e in HUB["config"]["env"] if e["key"] == "MODE_TO_RUN")["input"]
    assert modes["default"] == "serverless", "the image's own default is pod"


def test_tests_json_cases_and_config():
    assert TESTS["tests"], "the Hub runs these after each release build"
    for case in TESTS["tests"]:
        assert set(case) == {"name", "input", "timeout"} and case["timeout"] >= 60_000
        assert case["input"].get("prompt") or case["input"].get("messages")
    env = {e["key"]: e["value"] for e in TESTS["config"]["env"]}
    assert env["MODE_TO_RUN"] == "serverless"
    assert TESTS["config"]["gpuCount"] >= 1


def test_the_hub_finds_handler_py_in_runpod_folder():
    """The Hub asks for handler.py at the root or in .runpod/: a link to the exported one."""
    link = REPO_ROOT / ".runpod" / "handler.py"
    assert link.is_symlink() and link.resolve() == (REPO_ROOT / "build" / "handler.py").resolve()
