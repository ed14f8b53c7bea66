"""The kit's own settings, declared once in llmkit/runtime/kit_settings.py: what each accepts,
the line a bad one gives, the values start.sh takes, and the docs' table. No vLLM here: the
engine's settings are tests/test_runtime_settings.py's."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from llmkit.paths import REPO_ROOT
from llmkit.runtime import cluster, kit_settings
from llmkit.runtime.errors import SettingsError


def test_defaults_and_the_defaults_that_follow_another_setting():
    kit = kit_settings.read({})
    assert (kit.mode_to_run, kit.concurrency_modifier, kit.default_max_tokens) == ("pod", 1, 512)
    assert (kit.stream_interval_ms, kit.stream_interval_max_ms) == (100, 500)
    assert (kit.port, kit.port_health, kit.log_level, kit.worker_loop) == (80, 80, "INFO", "kit")
    follows = kit_settings.read({"STREAM_INTERVAL_MS": "900", "PORT": "8000"})
    assert (follows.stream_interval_max_ms, follows.port_health) == (900, 8000)


def test_values_as_a_template_form_gives_them():
    kit = kit_settings.read({"MODE_TO_RUN": " Serverless ", "LOG_LEVEL": "warn", "HANDLER_RELOAD":
                         "TRUE", "WORKER_LOOP": "SDK", "CONCURRENCY_MODIFIER": " 8 ",
                         "PORT_HEALTH": "", "JUPYTER_PASSWORD": "not read here"})
    assert (kit.mode_to_run, kit.log_level, kit.handler_reload, kit.worker_loop,
            kit.concurrency_modifier, kit.port_health) == ("serverless", "WARNING", True,
                                                           "sdk", 8, 80)


@pytest.mark.parametrize("name, value, expected", [
    ("MODE_TO_RUN", "server", "expected pod, serverless, both or lb"),
    ("CONCURRENCY_MODIFIER", "0", "expected an integer from 1 to 1024"),
    ("CONCURRENCY_MODIFIER", "2.5", "expected an integer from 1 to 1024"),
    ("CONCURRENCY_MODIFIER", "1025", "expected an integer from 1 to 1024"),
    ("DEFAULT_MAX_TOKENS", "-3", "expected an integer >= 1"),
    ("STREAM_INTERVAL_MS", "fast", "expected an integer from 0 to 60000"),
    ("STREAM_INTERVAL_MAX_MS", "50",
     "expected an integer from STREAM_INTERVAL_MS (100) to 60000"),
    ("HANDLER_RELOAD", "sometimes", "expected true or false"),
    ("LOG_LEVEL", "loud", "expected DEBUG, INFO, WARNING or ERROR"),
    ("WORKER_LOOP", "fast", "expected kit or sdk"),
    ("PORT", "http", "expected a port from 1 to 65535"),
    ("PORT_HEALTH", "0", "expected a port from 1 to 65535"),
    ("SSH_PORT", "65536", "expected a port from 1 to 65535"),
])
def test_a_bad_value_is_one_line_that_names_the_variable(name, value, expected):
    with pytest.raises(SettingsError) as refused:
        kit_settings.read({name: value})
    assert str(refused.value) == f"{name}={value!r} is not valid: {expected}"


def test_one_setting_alone():
    assert kit_settings.get("worker_loop", {"WORKER_LOOP": "Sdk"}) == "sdk"
    assert kit_settings.get("model_cache_dir", {}) == "/runpod-volume/huggingface-cache/hub"
    with pytest.raises(SettingsError, match="LOG_LEVEL='x'"):
        kit_settings.get("log_level", {"LOG_LEVEL": "x", "PORT": "not read"})


def run_module(*args, **env):
    return subprocess.run([sys.executable, "-m", "llmkit.runtime.kit_settings", *args],
                          env={**{k: v for k, v in os.environ.items()
                                  if k not in kit_settings.VARIABLES}, **env},
                          capture_output=True, text=True)


def test_start_sh_takes_the_checked_values_and_no_secret():
    run = run_module("--shell", MODE_TO_RUN="BOTH", PORT="8000", JUPYTER_PASSWORD="s3cret",
                     PUBLIC_KEY="ssh-ed25519 AAAA")
    assert run.returncode == 0, run.stderr
    assigned = dict(line.split("=", 1) for line in run.stdout.splitlines())
    assert assigned == {"MODE_TO_RUN": "both", "CONCURRENCY_MODIFIER": "1", "SSH_PORT": "22",
                        "JUPYTER_PORT": "8888", "PORT": "8000", "PORT_HEALTH": "8000",
                        "CLUSTER": "off", "RAY_PORT": "6379"}
    bad = run_module("--shell", CONCURRENCY_MODIFIER="lots")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == ("CONCURRENCY_MODIFIER='lots' is not valid: expected an integer "
                          "from 1 to 1024\n")


def test_the_docs_table_is_the_declarations():
    docs = (REPO_ROOT / "docs" / "SETTINGS.md").read_text()
    table = docs.split("<!-- kit_settings.py's table: begin -->\n")[1].split("<!--")[0]
    assert table == kit_settings.markdown(), \
        "docs/SETTINGS.md is stale: paste `python -m llmkit.runtime.kit_settings --markdown`"


def test_the_runtime_reads_no_setting_of_its_own_outside_the_declarations():
    """Every ``environ.get("NAME")`` in the runtime names a declared setting, or one the
    platform sets for the worker (RUNPOD_*, and an Instant Cluster's NUM_NODES, ...): a new
    setting is declared, not read ad hoc."""
    read = {}
    for path in sorted((REPO_ROOT / "scripts" / "llmkit" / "runtime").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" \
                    and "environ" in ast.unparse(node.func.value) and node.args \
                    and isinstance(node.args[0], ast.Constant):
                read.setdefault(node.args[0].value, path.name)
    undeclared = {name: where for name, where in read.items()
                  if name not in kit_settings.VARIABLES and not name.startswith("RUNPOD_")
                  and name not in cluster.RUNPOD_VARIABLES}
    assert undeclared == {}
    assert read, "the walk found no environ.get at all: it is broken"
