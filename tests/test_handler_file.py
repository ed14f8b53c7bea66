"""The committed handler.py: in sync, small, inert on import, strict on its runtime and settings."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time

import pytest
from endpoint_fixtures import EndpointProcess

from llmkit import export

STDLIB = set(sys.stdlib_module_names)


def test_committed_handler_is_in_sync_with_the_notebook(repo_root, handler_path):
    fresh = export.export(repo_root / "notebooks" / "handler_dev.ipynb")
    assert handler_path.read_text() == fresh, "run `make export-handler`, commit build/handler.py"


def test_make_check_handler_passes(repo_root):
    result = subprocess.run(["make", "-s", "check-handler"], cwd=repo_root, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_handler_imports_only_the_kits_runtime_and_the_standard_library(handler_path):
    """The iteration image adds this one file to the base image, which holds the runtime."""
    tree = ast.parse(handler_path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module)
    assert {"llmkit.runtime", "llmkit.runtime.versions"} <= roots
    assert all(r.startswith("llmkit.runtime") or r.split(".")[0] in STDLIB for r in roots), roots


def test_the_handler_states_the_runtime_api_it_was_written_for(handler_path):
    from llmkit.runtime.versions import API_VERSION

    text = handler_path.read_text()
    assert f"# Written for the kit's runtime API {API_VERSION} " in text
    assert f'require("{API_VERSION}")' in text


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
        "from llmkit.runtime import settings, vllm_engine\n"
        "assert not vllm_engine.running()\n"
        "assert mp.active_children() == [], mp.active_children()\n"
        "s = settings()\n"
        "print('ok', s.kit.concurrency_modifier, s.engine_args['dtype'], s.engine_args['model'])\n"
    )
    result = run_handler_code(handler_path, code, MODEL=str(tiny_model_dir),
                              CONCURRENCY_MODIFIER="3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ok", "3", "float32", str(tiny_model_dir)]


@pytest.mark.vllm
# Each kind of check once, through the worker's real start; tests/test_runtime_settings.py
# has every message.
@pytest.mark.parametrize("name, value, expected", [
    ("CONCURRENCY_MODIFIER", "zero", "CONCURRENCY_MODIFIER='zero' is not valid"),
    ("DTYPE", "float99", "DTYPE='float99' is not valid: invalid choice: 'float99'"),
    ("MAX_MODEL_LEN", "-5", "vLLM refused the settings MAX_MODEL_LEN='-5': MAX_MODEL_LEN: Input "
                            "should be greater than or equal to -1"),
    # Checked by vLLM's configs when the engine is made.
    ("GPU_MEMORY_UTILIZATION", "1.5", "GPU_MEMORY_UTILIZATION: Input should be less than or equal"),
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


@pytest.mark.service
def test_a_runtime_of_another_api_refuses_the_handler_before_any_job(tmp_path, handler_path,
                                                                    tiny_model_dir):
    """A handler.py written for runtime API 2.0 on this image's runtime: the worker reports
    itself unhealthy, naming both versions, and exits 1 before it takes a job."""
    from llmkit.runtime.versions import API_VERSION

    stamped = tmp_path / "handler.py"
    stamped.write_text(handler_path.read_text().replace(f'require("{API_VERSION}")',
                                                        'require("2.0")'))
    endpoint = EndpointProcess(workers=1, handler=stamped, model=tiny_model_dir, endpoint_id="api",
                               log_path=tmp_path / "endpoint.log").start()
    try:
        exited = endpoint.wait_for_log(r"worker-1 exited with code (\d+)", timeout=60)
        job = endpoint.run({"prompt": "hi"})
        time.sleep(1)  # no worker takes it
        state = endpoint.status(job)["status"]
        worker = next(w for w in endpoint.workers() if w["id"] == "worker-1")
        log = endpoint.log_text()
    finally:
        endpoint.stop()
    assert exited.group(1) == "1" and state == "IN_QUEUE"
    reason = (f"handler.py was written for the kit's runtime API 2.0, but this image's "
              f"runtime is API {API_VERSION}")
    assert reason in log and worker["unhealthyReason"].startswith("runtime-version: "), log
    assert "Traceback" not in log


@pytest.mark.parametrize("entry", ["llmkit.demo", "llmkit.endpoint"])
def test_a_missing_handler_stops_each_entry_point_alike(entry, tmp_path):
    result = subprocess.run([sys.executable, "-m", entry, "--handler", str(tmp_path / "h.py"),
                             *(["--workers", "1"] if entry == "llmkit.endpoint" else [])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (f"error: {tmp_path / 'h.py'} does not exist: run "
                             "`make export-handler` first\n"), result.stderr
