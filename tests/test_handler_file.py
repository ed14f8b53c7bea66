"""The committed handler.py: in sync, self-contained, inert on import, strict on settings."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from llmkit import export

STDLIB = set(sys.stdlib_module_names)


def test_committed_handler_is_in_sync_with_the_notebook(repo_root, handler_path):
    fresh = export.export(repo_root / "notebooks" / "handler_dev.ipynb")
    assert handler_path.read_text() == fresh, "run `make export-handler`, commit build/handler.py"


def test_make_check_handler_passes(repo_root):
    result = subprocess.run(["make", "-s", "check-handler"], cwd=repo_root, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_handler_imports_only_runpod_vllm_and_stdlib(handler_path):
    tree = ast.parse(handler_path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots - STDLIB == {"runpod", "vllm"}, roots


def run_handler_code(handler_path, code, **env):
    """Run ``code`` in a fresh interpreter after importing handler.py as a module.

    That imports vLLM, 10 s or more: the tests that do it are marked ``vllm``."""
    prelude = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('h', {str(handler_path)!r})\n"
        "h = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(h)\n"
    )
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-c", prelude + code], env=full_env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.vllm
def test_import_starts_no_engine(handler_path, tiny_model_dir):
    code = (
        "import multiprocessing as mp, threading\n"
        "assert h._engine is None\n"
        "assert mp.active_children() == [], mp.active_children()\n"
        "print('ok', h.CONCURRENCY_MODIFIER, h.ENGINE_ARGS['dtype'], h.ENGINE_ARGS['model'])\n"
    )
    result = run_handler_code(handler_path, code, MODEL=str(tiny_model_dir),
                              CONCURRENCY_MODIFIER="3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ok", "3", "float32", str(tiny_model_dir)]


@pytest.mark.vllm
@pytest.mark.parametrize("preset", [None, "auto"])
def test_on_a_cpu_vllm_gets_every_core_unless_told_otherwise(handler_path, tiny_model_dir,
                                                             preset):
    code = "import os; print(os.environ['VLLM_CPU_OMP_THREADS_BIND'])\n"
    env = {"MODEL": str(tiny_model_dir)}
    if preset:
        env["VLLM_CPU_OMP_THREADS_BIND"] = preset
    saved = os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    try:
        result = run_handler_code(handler_path, code, **env)
    finally:
        if saved is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved
    assert result.returncode == 0, result.stderr[-2000:]
    every_core = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    assert result.stdout.split() == [preset or every_core]


@pytest.mark.vllm
@pytest.mark.parametrize("name, value, expected", [
    ("CONCURRENCY_MODIFIER", "zero", "CONCURRENCY_MODIFIER='zero' is not valid"),
    ("CONCURRENCY_MODIFIER", "0", "an integer from 1 to 1024"),
    ("MAX_MODEL_LEN", "-5", "MAX_MODEL_LEN='-5' is not valid: expected an integer >= 16"),
    ("MAX_MODEL_LEN", "4k", "MAX_MODEL_LEN='4k' is not valid"),
    ("ENFORCE_EAGER", "maybe", "ENFORCE_EAGER='maybe' is not valid: expected true or false"),
    ("STREAM_INTERVAL_MS", "-1", "STREAM_INTERVAL_MS='-1' is not valid: expected an integer"),
    ("STREAM_INTERVAL_MAX_MS", "50",  # below STREAM_INTERVAL_MS, 100 by default
     "STREAM_INTERVAL_MAX_MS='50' is not valid: expected an integer from STREAM_INTERVAL_MS "
     "(100) to 60000"),
])
def test_bad_settings_stop_start_up_with_a_clear_message(handler_path, tiny_model_dir, name,
                                                         value, expected):
    env = {**os.environ, "MODEL": str(tiny_model_dir), name: value}
    result = subprocess.run([sys.executable, str(handler_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr  # a message, not a stack dump


@pytest.mark.vllm
def test_missing_model_stops_start_up(handler_path):
    env = {k: v for k, v in os.environ.items() if k != "MODEL"}
    result = subprocess.run([sys.executable, str(handler_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert "MODEL is not set" in result.stderr
