"""Runpod's cached models: MODEL=org/name served from the host's Hugging Face cache.

An endpoint's "Model" setting makes Runpod put that hub model on the host before the
worker starts, in huggingface_hub's cache layout:
``/runpod-volume/huggingface-cache/hub/models--ORG--NAME/snapshots/COMMIT/``. An image
built without a model (``make image MODEL=``) serves it: this module finds the snapshot
folder that vLLM then loads as a plain folder, offline. It only reads the folders (the
standard library, no vLLM or huggingface_hub), so a missing model fails at once with a
message that names the path it looked in and the setting that fixes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmkit.runtime.worker_loop import StartupError

CACHE_DIR_VAR = "MODEL_CACHE_DIR"
DEFAULT_CACHE_DIR = "/runpod-volume/huggingface-cache/hub"


class CachedModelMissing(StartupError):
    """MODEL (at MODEL_REVISION) is not in the model cache; the message says where it looked."""


def is_repo_id(spec: str) -> bool:
    """``org/name``: one slash, two non-empty parts, and not a path that exists."""
    org, _, name = spec.partition("/")
    return (spec.count("/") == 1 and bool(org) and bool(name)
            and not spec.startswith(("/", ".", "~")) and not os.path.exists(spec))


def repo_folder(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the hub cache keeps ``repo_id`` (default: $MODEL_CACHE_DIR, else Runpod's)."""
    root = cache_dir or os.environ.get(CACHE_DIR_VAR, "").strip() or DEFAULT_CACHE_DIR
    return Path(root) / ("models--" + repo_id.replace("/", "--"))


def resolve(repo_id: str, revision: str = "",
            cache_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(snapshot folder, commit) of ``repo_id`` in the cache: the one ``revision`` names (a
    commit, a prefix of 7+ of its characters, or a ref such as ``main``), else the newest
    snapshot that holds a config.json. Raises CachedModelMissing."""
    repo = repo_folder(repo_id, cache_dir)
    snapshots = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir())
    refs_dir = repo / "refs"
    refs = {p.relative_to(refs_dir).as_posix(): p.read_text().strip()
            for p in sorted(refs_dir.rglob("*")) if p.is_file()}
    revision = revision.strip()
    if revision:
        commit = refs.get(revision, revision)
        found = [p for p in snapshots if p.name == commit
                 or (len(commit) >= 7 and p.name.startswith(commit))]
        if len(found) == 1 and (found[0] / "config.json").is_file():
            return found[0], found[0].name
        there = ", ".join([p.name for p in snapshots]
                          + [f"{name} (-> {value[:12]})" for name, value in refs.items()])
        raise CachedModelMissing(
            f"MODEL_REVISION={revision!r} of MODEL={repo_id!r} is not in Runpod's model "
            f"cache: {repo / 'snapshots'} holds {there or 'nothing'}. Set MODEL_REVISION to "
            "one of those (a commit, 7+ of its first characters, or a ref), or leave it "
            "empty for the newest snapshot.")
    usable = [p for p in snapshots if (p / "config.json").is_file()]
    if not usable:
        mounted = "" if repo.parent.is_dir() else f" (no model cache at {repo.parent})"
        raise CachedModelMissing(
            f"MODEL={repo_id!r} is not in Runpod's model cache: {repo} has no snapshot"
            f"{' with a config.json' if snapshots else ''}{mounted}. Set the endpoint's "
            f"Model field (cached models) to {repo_id}, or bake the model into the image "
            f"(make image MODEL={repo_id}).")
    newest = max(usable, key=lambda p: p.stat().st_mtime)
    return newest, newest.name
