"""The runpod SDK touchpoints (runtime/runpod_sdk.py): each one the kit imports is in the
installed SDK, which is the pinned one, and each is named where the kit uses it."""

from __future__ import annotations

import importlib

import pytest

from llmkit.paths import REPO_ROOT
from llmkit.runtime import runpod_sdk


def test_the_installed_sdk_is_the_pinned_one_and_was_read():
    import runpod

    assert runpod.__version__ == runpod_sdk.PINNED
    assert runpod_sdk.PINNED in runpod_sdk.READ_IN
    assert f'"runpod=={runpod_sdk.PINNED}"' in (REPO_ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("touchpoint", runpod_sdk.importable(), ids=lambda t: t.place)
def test_each_importable_touchpoint_is_in_the_installed_sdk(touchpoint):
    module, attribute = touchpoint.place.split(":")
    assert hasattr(importlib.import_module(module), attribute), touchpoint.place


@pytest.mark.parametrize("touchpoint", runpod_sdk.TOUCHPOINTS, ids=lambda t: t.place)
def test_each_touchpoint_is_named_where_the_kit_relies_on_it(touchpoint):
    """The list cannot drift from the code: the module it names uses the name."""
    path = (REPO_ROOT / touchpoint.used_by if "/" in touchpoint.used_by
            else REPO_ROOT / "scripts" / "llmkit" / "runtime" / touchpoint.used_by)
    source = path.read_text()
    names = touchpoint.place.split(" (")[0].replace(":", ".").split(", ")
    for name in names:
        last = name.rsplit(".", 1)[-1] if ":" in touchpoint.place else name
        assert last in source, f"{path.name} does not use {last} ({touchpoint.place})"
