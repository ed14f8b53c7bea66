"""Runpod's cached models (llmkit.runtime.model_cache): MODEL=org/name served from the
host's Hugging Face cache. The cache is a real one, written by huggingface_hub's own
snapshot_download from a local stand-in for the hub (hub_cache.py), with two commits of
the kit's embedded model; a copy of it is spelled in lowercase, as Runpod may write it.

The fast tests resolve snapshots and read the settings; one test runs the exported
build/handler.py as a real worker (vLLM) on the cache behind the local endpoint, and one
shows a worker with an empty cache exiting with the message."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hub_cache
import pytest
from image_fixtures import worker_env

from llmkit import models
from llmkit.endpoint.harness import EndpointProcess
from llmkit.runtime import model_cache
from llmkit.runtime.errors import StartupError
from llmkit.runtime.model_cache import CachedModelMissing, find

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
OLD, NEW = hub_cache.COMMITS


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A hub cache holding REPO at two commits (NEW downloaded last); refs/main is NEW."""
    root = tmp_path_factory.mktemp("runpod-volume") / "huggingface-cache" / "hub"
    folders = hub_cache.make_cache(root, REPO, models.prepare_default())
    assert [f.name for f in folders] == [OLD, NEW]
    return root


def snapshot(cache: Path, commit: str) -> Path:
    return cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit


def test_the_cache_is_huggingface_hubs_own_layout(cache):
    repo = cache / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    assert (repo / "refs" / "main").read_text() == NEW
    assert (snapshot(cache, NEW) / "config.json").is_symlink()
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [OLD, NEW]
    assert len(list((repo / "blobs").iterdir())) == len(list(snapshot(cache, NEW).iterdir()))


def test_repo_ids():
    assert model_cache.is_repo_id("org/name")
    for spec in ("", "name", "a/b/c", "/org", "org/", "./a", "~/a", "/models/x",
                 "SmolLM2-135M-Instruct"):
        assert not model_cache.is_repo_id(spec), spec


def found(repo_id, revision="", cache_dir=None):
    snapshot = find(repo_id, revision, cache_dir)
    return snapshot.folder, snapshot.commit


def test_the_snapshot_refs_main_names_by_default(cache):
    assert found(REPO, cache_dir=cache) == (snapshot(cache, NEW), NEW)


def test_refs_main_wins_over_the_latest_written_and_without_it_the_newest(cache, tmp_path):
    """What snapshot_download (and so vLLM) would load: refs/main, however old."""
    copy = tmp_path / "hub"
    shutil.copytree(cache, copy, symlinks=True)
    later = time.time() + 60
    os.utime(snapshot(copy, OLD), (later, later))  # OLD written last
    assert found(REPO, cache_dir=copy) == (snapshot(copy, NEW), NEW)
    (copy / f"models--{REPO.replace('/', '--')}" / "refs" / "main").unlink()
    assert found(REPO, cache_dir=copy) == (snapshot(copy, OLD), OLD)


def test_a_lowercase_folder_is_the_model_too(cache, tmp_path):
    """Runpod may write models--org--name in lowercase; hub ids ignore case. The folder
    spelled as the id wins when both are there."""
    lower = tmp_path / "hub"
    name = f"models--{REPO.replace('/', '--')}"
    shutil.copytree(cache / name, lower / name.lower(), symlinks=True)
    folder = lower / name.lower() / "snapshots" / NEW
    assert find(REPO, cache_dir=lower) == (folder, NEW, lower / name.lower())
    assert find(REPO.upper(), OLD[:7], lower).commit == OLD
    shutil.copytree(cache / name, lower / name, symlinks=True)
    assert find(REPO, cache_dir=lower).repo_folder == lower / name
    assert find(REPO.lower(), cache_dir=lower).repo_folder == lower / name.lower()


@pytest.mark.parametrize("revision, commit", [(OLD, OLD), (NEW, NEW), (OLD[:7], OLD),
                                               (NEW[:12], NEW), ("main", NEW),
                                               (f" {OLD} ", OLD)])
def test_model_revision_picks_a_snapshot(cache, revision, commit):
    assert found(REPO, revision, cache_dir=cache) == (snapshot(cache, commit), commit)


@pytest.mark.parametrize("revision", ["v2.0", "111111", "3" * 40])
def test_an_unknown_revision_lists_what_is_there(cache, revision):
    with pytest.raises(CachedModelMissing) as error:
        find(REPO, revision, cache_dir=cache)
    message = str(error.value)
    assert f"MODEL_REVISION={revision!r} of MODEL={REPO!r}" in message
    assert str(cache / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots") in message
    assert f"{OLD}, {NEW} (main)" in message


def test_a_missing_model_names_the_path_and_the_setting(cache, tmp_path):
    with pytest.raises(CachedModelMissing) as error:
        find("org/other", cache_dir=cache)
    assert isinstance(error.value, StartupError)  # the worker prints it, no traceback
    assert str(error.value) == (
        f"MODEL='org/other' is not in Runpod's model cache: {cache}/models--org--other has "
        "no snapshot. Set the endpoint's Model field (cached models) to org/other, or bake "
        "the model into the image (make image MODEL=org/other).")
    with pytest.raises(CachedModelMissing, match=r"\(no model cache at .*/nothing-here\)"):
        find(REPO, cache_dir=tmp_path / "nothing-here")


def test_the_default_cache_is_runpods():
    assert model_cache.DEFAULT_CACHE_DIR == "/runpod-volume/huggingface-cache/hub"
    if not Path(model_cache.DEFAULT_CACHE_DIR).exists():
        with pytest.raises(CachedModelMissing, match="/runpod-volume/huggingface-cache/hub/"
                                                     "models--org--name has no snapshot"):
            find("org/name", cache_dir=None)


def test_settings_load_the_snapshot_served_as_the_repo_id(cache, capfd):
    from llmkit.runtime import config

    env = {"MODEL": REPO, model_cache.CACHE_DIR_VAR: str(cache)}
    settings = config.load(env)
    config.load(env)
    assert settings.model == str(snapshot(cache, NEW))
    assert settings.serve_args.model == str(snapshot(cache, NEW))
    assert settings.serve_args.served_model_name == [REPO]
    announced = capfd.readouterr().err
    assert announced.count(f"MODEL={REPO}: cached snapshot {NEW} ({snapshot(cache, NEW)})\n") == 1
    pinned = config.load({**env, "MODEL_REVISION": OLD[:8], "MODEL_ID": "smol"})
    assert pinned.serve_args.model == str(snapshot(cache, OLD))
    assert pinned.serve_args.served_model_name == ["smol"]
    with pytest.raises(CachedModelMissing, match="models--org--x has no snapshot"):
        config.load({**env, "MODEL": "org/x"})
    folder = config.load({"MODEL": str(snapshot(cache, NEW))})  # a folder: as before
    assert folder.serve_args.served_model_name == [NEW]


def test_settings_serve_a_lowercase_folder_under_the_name_the_user_gave(cache, tmp_path):
    """The issue's case: models--acme--tiny-chat on the volume, MODEL=Acme/Tiny-Chat."""
    from llmkit.runtime import config

    lower = tmp_path / "hub" / "models--acme--tiny-chat"
    shutil.copytree(cache / f"models--{REPO.replace('/', '--')}", lower, symlinks=True)
    env = {"MODEL": "Acme/Tiny-Chat", model_cache.CACHE_DIR_VAR: str(lower.parent)}
    settings = config.load(env)
    assert settings.serve_args.model == str(lower / "snapshots" / NEW)
    assert settings.serve_args.served_model_name == ["Acme/Tiny-Chat"]


def test_the_notebook_finds_the_cached_model_and_says_what_the_worker_says(
        cache, repo_root, monkeypatch, tmp_path):
    from test_notebook import run_setup  # the notebook's own setup cell, as papermill runs it

    monkeypatch.setenv(model_cache.CACHE_DIR_VAR, str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty: only Runpod's cache has it
    monkeypatch.delenv("MODEL_REVISION", raising=False)
    monkeypatch.setenv("MODEL", REPO)
    run_setup(repo_root)
    assert os.environ["MODEL"] == str(snapshot(cache, NEW))
    monkeypatch.setenv("MODEL_REVISION", OLD[:7])
    run_setup(repo_root, model=REPO)
    assert os.environ["MODEL"] == str(snapshot(cache, OLD))
    monkeypatch.delenv("MODEL_REVISION")
    with pytest.raises(models.ModelError) as error:
        run_setup(repo_root, model="org/other")
    with pytest.raises(CachedModelMissing) as worker:
        find("org/other")
    assert str(error.value).startswith(str(worker.value)), error.value
    assert "Nor is it in the local Hugging Face cache" in str(error.value)


# --- a real worker: the exported handler on the cache ---------------------------------

def start_worker(endpoint: EndpointProcess, cache: Path, folder: Path, handler: Path):
    env = {**os.environ, **worker_env(endpoint), "MODEL": REPO, "HF_HUB_OFFLINE": "1",
           model_cache.CACHE_DIR_VAR: str(cache), "PYTHONUNBUFFERED": "1"}
    env.pop("MODEL_ID", None)
    log = open(folder / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, str(handler)], cwd=folder, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, folder / "worker.log"


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_a_worker_serves_the_cached_model_and_a_missing_one_exits(cache, handler_path,
                                                                  tmp_path):
    with EndpointProcess(workers=0, endpoint_id="cached", log_path=tmp_path / "ep.log") as ep:
        proc, log = start_worker(ep, cache, tmp_path, handler_path)
        try:
            deadline = time.monotonic() + 600
            while not sum(ep.health()["workers"][k] for k in ("idle", "running")):
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.5)
            hub_cache.assert_serves(ep, REPO)
            text = log.read_text()
            assert f"MODEL={REPO}: cached snapshot {NEW} ({snapshot(cache, NEW)})" in text
        finally:
            proc.terminate()
            proc.wait(timeout=60)

        empty = tmp_path / "empty-cache"
        empty.mkdir()
        folder = tmp_path / "missing"
        folder.mkdir()
        started = time.monotonic()
        proc, log = start_worker(ep, empty, folder, handler_path)
        code = proc.wait(timeout=120)
        took = time.monotonic() - started
        text = log.read_text()
        print(f"a worker with an empty cache exited {code} after {took:.1f} s")
        assert code != 0, text[-3000:]
        assert took < 60, text[-3000:]
        assert (f"MODEL='{REPO}' is not in Runpod's model cache: {empty}/models--HuggingFaceTB"
                f"--SmolLM2-135M-Instruct has no snapshot") in text
        assert f"Set the endpoint's Model field (cached models) to {REPO}" in text
        assert "Traceback" not in text, text[-3000:]
        assert re.search(r"worker exiting with code 1: MODEL=", text), text[-3000:]
