"""The Makefile: `make help` names every target a user may call."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from llmkit.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")


def targets() -> set[str]:
    """Rule names (`name:` at the start of a line), not variables or pattern rules."""
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):(?!=)", text, re.M))


def test_help_lists_every_target():
    out = subprocess.run(["make", "-s", "help"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60).stdout
    listed = set(re.findall(r"^make (\S+)", out, re.M))
    assert {"demo", "test", "test-fast", "image"} <= targets()  # the parse finds them
    assert targets() - listed - {"help"} == set(), "add them to `make help`"
    assert listed - targets() == set(), "`make help` names targets that do not exist"


def test_make_serve_keeps_its_worker_and_serves_each_new_export():
    """`make serve`'s workers reload build/handler.py (tests/test_reload_worker.py runs
    python -m llmkit.endpoint --reload for real)."""
    out = subprocess.run(["make", "-n", "serve"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60).stdout
    command = next(line for line in out.splitlines() if "-m llmkit.endpoint" in line)
    assert "--reload" in command and '--handler "build/handler.py"' in command, command


def test_make_test_handler_runs_the_notebooks_own_tests_on_the_model():
    """tests/test_handler_tests.py runs `python -m llmkit.handler_tests` for real."""
    env = {k: v for k, v in os.environ.items() if k != "MODEL"}  # as a newcomer's shell
    out = subprocess.run(["make", "-n", "test-handler", "NOTEBOOK=notebooks/recipes/x.ipynb"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                         env=env).stdout
    command = next(line for line in out.splitlines() if "-m llmkit.handler_tests" in line)
    assert command.startswith('MODEL="SmolLM2-135M-Instruct" '), command
    assert "llmkit.handler_tests notebooks/recipes/x.ipynb" in command, command
