"""The image's pip requirements: pyproject.toml's pins plus the DEVICE extra, printed one a
line. On the GPU, vllm is pinned to the base image's VLLM_VERSION, which must be one of the
releases the kit supports (SUPPORTED in llmkit/runtime/vllm_api.py, read without importing
it: this runs before the kit is installed).

    DEVICE=gpu VLLM_VERSION=0.34.0 python3 image_requirements.py pyproject.toml vllm_api.py
"""

import ast
import os
import re
import sys

import tomllib


def supported(vllm_api_path):
    for node in ast.parse(open(vllm_api_path).read()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SUPPORTED":
            return ast.literal_eval(node.value)
    raise SystemExit(f"{vllm_api_path}: no SUPPORTED")


def requirements(pyproject_path, vllm_api_path, device, vllm_version):
    project = tomllib.load(open(pyproject_path, "rb"))["project"]
    pins = project["dependencies"] + project["optional-dependencies"][device]
    if device != "gpu":
        return pins
    releases = supported(vllm_api_path)
    if vllm_version not in releases:
        raise SystemExit(f"VLLM_VERSION={vllm_version!r}: the kit supports vLLM "
                         f"{', '.join(releases)} (make check-vllm checks each)")
    return [f"vllm=={vllm_version}" if re.match(r"vllm\s*==", p) else p for p in pins]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2], os.environ["DEVICE"],
                                 os.environ.get("VLLM_VERSION", ""))))
