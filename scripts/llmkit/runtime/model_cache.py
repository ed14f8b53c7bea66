"""Runpod's cached models: MODEL=org/name served from a Hugging Face cache on the host.

An endpoint's "Model" setting makes Runpod put that hub model on the host before the
worker starts, in huggingface_hub's cache layout:
``/runpod-volume/huggingface-cache/hub/models--ORG--NAME/snapshots/COMMIT/``. Runpod may
write the folder name in lowercase (``models--qwen--qwen2.5-coder-32b-instruct-awq`` for
``Qwen/Qwen2.5-Coder-32B-Instruct-AWQ``); hub repo ids are case-insensitive, so that
folder is the model too.

`find()` is the one lookup, for the worker (config.py) and the notebook (models.py)
alike. huggingface_hub reads its own layout (`scan_cache_dir`: refs, snapshots,
revisions); this module only picks a snapshot, as huggingface_hub would:

* MODEL_REVISION: a ref (``main``, a tag), a commit, or 7+ of its first characters;
* none: the snapshot ``refs/main`` names, which is what ``snapshot_download`` and vLLM
  load; a cache with no ``main`` ref gives its newest snapshot.

vLLM then loads that folder as a plain folder, offline. A missing model fails at once
with a message that names where it looked and the setting that fixes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from llmkit.runtime import kit_settings
from llmkit.runtime.errors import CachedModelMissing

CACHE_DIR_VAR = "MODEL_CACHE_DIR"
DEFAULT_CACHE_DIR = kit_settings.Settings.model_fields["model_cache_dir"].default


class Snapshot(NamedTuple):
    folder: Path       # what vLLM loads
    commit: str
    repo_folder: Path  # models--ORG--NAME, as the cache spells it

    def describe(self, model: str) -> str:
        """The line the worker and the notebook log for the model they serve."""
        return f"MODEL={model}: cached snapshot {self.commit} ({self.folder})"


def is_repo_id(spec: str) -> bool:
    """``org/name``: one slash, two non-empty parts, and not a path that exists."""
    org, _, name = spec.partition("/")
    return (spec.count("/") == 1 and bool(org) and bool(name)
            and not spec.startswith(("/", ".", "~")) and not os.path.exists(spec))


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else $MODEL_CACHE_DIR, else Runpod's."""
    return Path(cache_dir or kit_settings.get("model_cache_dir"))


def find(repo_id: str, revision: str = "",
         cache_dir: str | os.PathLike | None = None) -> Snapshot:
    """The snapshot of ``repo_id`` at ``revision`` in a hub cache (default: Runpod's).
    Raises CachedModelMissing."""
    root = cache_root(cache_dir)
    expected = root / ("models--" + repo_id.replace("/", "--"))
    repo = _cached_repo(root, repo_id)
    # Oldest first: a snapshot folder's time is when it was written (blobs are shared).
    revisions = sorted(repo.revisions if repo else (),
                       key=lambda r: r.snapshot_path.stat().st_mtime)
    usable = [r for r in revisions if (r.snapshot_path / "config.json").is_file()]
    revision = revision.strip()
    if revision:
        found = [r for r in revisions if revision in r.refs or r.commit_hash == revision
                 or (len(revision) >= 7 and r.commit_hash.startswith(revision))]
        if len(found) == 1 and found[0] in usable:
            return _snapshot(found[0], repo)
        there = ", ".join(r.commit_hash + (f" ({', '.join(sorted(r.refs))})" if r.refs else "")
                          for r in revisions)
        raise CachedModelMissing(
            f"MODEL_REVISION={revision!r} of MODEL={repo_id!r} is not in Runpod's model "
            f"cache: {(repo.repo_path if repo else expected) / 'snapshots'} holds "
            f"{there or 'nothing'}. Set MODEL_REVISION to one of those (a commit, 7+ of its "
            "first characters, or a ref), or leave it empty for the one refs/main names.")
    main = [r for r in usable if "main" in r.refs]
    if main or usable:
        return _snapshot((main or usable)[-1], repo)
    mounted = "" if root.is_dir() else f" (no model cache at {root})"
    raise CachedModelMissing(
        f"MODEL={repo_id!r} is not in Runpod's model cache: "
        f"{repo.repo_path if repo else expected} has no snapshot"
        f"{' with a config.json' if revisions else ''}{mounted}. Set the endpoint's Model "
        f"field (cached models) to {repo_id}, or bake the model into the image "
        f"(make image MODEL={repo_id}).")


def _cached_repo(root: Path, repo_id: str):
    """huggingface_hub's CachedRepoInfo for ``repo_id`` in ``root``: the folder spelled as
    the id, else one spelled in another case (Runpod's lowercase folders). None if none."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        scan = scan_cache_dir(root)
    except CacheNotFound:
        return None
    models = [r for r in scan.repos if r.repo_type == "model"
              and r.repo_id.lower() == repo_id.lower()]
    models.sort(key=lambda r: (r.repo_id != repo_id, r.repo_id))  # the exact spelling first
    return models[0] if models else None


def _snapshot(revision, repo) -> Snapshot:
    return Snapshot(Path(revision.snapshot_path), revision.commit_hash, Path(repo.repo_path))
