"""Shared fixtures: the tiny random model, and paths into the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmkit import tiny_model
from llmkit.paths import REPO_ROOT

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def handler_path() -> Path:
    """The committed, exported handler.py (tests check it is in sync with the notebook)."""
    return REPO_ROOT / "build" / "handler.py"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama (head_dim 64, vocab ~512), generated once into the kit's cache."""
    return tiny_model.build()
