"""MODEL resolution: the embedded default, folders, hub ids; clear errors; atomic conversion;
what a build-time download bakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit import models


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "runpod-volume"))
    monkeypatch.delenv("MODEL_REVISION", raising=False)
    return tmp_path / "cache"


def test_local_folder_resolves(tiny_model_dir, cache):
    assert models.resolve(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_missing_folder_names_it(cache, tmp_path):
    with pytest.raises(models.ModelError, match=f"model folder {tmp_path}/nope does not exist"):
        models.resolve(str(tmp_path / "nope"))


def test_folder_without_config_or_weights(cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="has no readable config.json"):
        models.resolve(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(models.ModelError, match="no weights"):
        models.resolve(str(tmp_path / "empty"))


def test_hub_id_is_never_downloaded_at_run_time(cache):
    with pytest.raises(models.ModelError, match="'org/some' is not in Runpod's model cache.*"
                                                "Nor is it in the local Hugging Face cache"):
        models.resolve("org/some")


def test_nonsense_spec(cache):
    with pytest.raises(models.ModelError, match="neither 'SmolLM2-135M-Instruct'"):
        models.resolve("a/b/c")


def test_cli_reports_errors_without_traceback(cache, capsys):
    assert models.main(["prepare", "org/absent"]) == 1
    err = capsys.readouterr().err
    assert "error: MODEL='org/absent' is not in Runpod's model cache" in err
    assert "Nor is it in the local Hugging Face cache" in err and "Traceback" not in err


def test_interrupted_conversion_leaves_nothing_that_looks_finished(cache, monkeypatch):
    def crash(gguf, out):
        (out / "config.json").write_text("{}")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        models.prepare_default()
    assert not models.default_model_dir().exists()
    assert list(models.default_model_dir().parent.iterdir()) == []  # scratch removed too


@pytest.mark.engine
def test_default_model_converts_from_the_wheel_once(cache, monkeypatch):
    folder = models.resolve("SmolLM2-135M-Instruct")
    assert folder == models.default_model_dir().resolve()
    assert (folder / "model.safetensors").stat().st_size > 200_000_000
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user" in text
    # Later runs reuse it without converting again.
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert models.resolve("smollm2-135m-instruct") == folder
    # Its hub name too, when Runpod's model cache does not hold it (the fixture's is empty).
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == folder


# --- build time: what `download` bakes, from a local folder standing in for the hub -----------

REMOTE_CODE_CONFIG = {
    "model_type": "tinyx",
    "auto_map": {"AutoConfig": "configuration_tinyx.TinyXConfig",
                 "AutoModelForCausalLM": "modeling_tinyx.TinyXForCausalLM",
                 "AutoTokenizer": ["other/repo--tokenization_x.XTokenizer", None]},
}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake hub: ``hub/<org>/<name>/<revision>/`` folders, served by a stand-in for
    ``huggingface_hub.snapshot_download`` that filters with the hub library's own matcher."""
    import shutil

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    root = tmp_path / "hub"

    def snapshot_download(repo_id, *, local_dir, revision=None, token=None, allow_patterns=None):
        src = root / repo_id / (revision or "main")
        assert src.is_dir(), f"no revision {revision} of {repo_id}"
        names = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
        for name in filter_repo_objects(names, allow_patterns=allow_patterns):
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / name, Path(local_dir) / name)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("MODEL_REVISION", raising=False)

    def add(repo_id, files, revision="main"):
        folder = root / repo_id / revision
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)

    return add


def repo_files(**extra):
    files = {"config.json": json.dumps(REMOTE_CODE_CONFIG), "generation_config.json": "{}",
             "configuration_tinyx.py": "# config class", "modeling_tinyx.py": "# model class",
             "tokenizer.json": "{}", "tokenizer_config.json": "{}", "tokenizer.model": "spm",
             "merges.txt": "", "chat_template.jinja": "{{ messages }}", "README.md": "# card",
             "onnx/model.onnx": "onnx weights"}
    return {**files, **extra}


def test_download_keeps_a_remote_code_models_own_code(hub, tmp_path):
    hub("org/tinyx", repo_files(**{"model.safetensors": "weights",
                                   "pytorch_model.bin": "the same weights again"}))
    dest = models.download("org/tinyx", tmp_path / "baked")
    baked = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert baked == ["chat_template.jinja", "config.json", "configuration_tinyx.py",
                     "generation_config.json", "merges.txt", "model.safetensors",
                     "modeling_tinyx.py", "tokenizer.json", "tokenizer.model",
                     "tokenizer_config.json"]


def test_download_takes_bin_weights_when_there_are_no_safetensors(hub, tmp_path):
    hub("org/old", repo_files(**{"pytorch_model.bin": "weights"}))
    dest = models.download("org/old", tmp_path / "baked")
    assert (dest / "pytorch_model.bin").is_file() and (dest / "modeling_tinyx.py").is_file()


def test_model_revision_pins_what_is_downloaded(hub, tmp_path, monkeypatch, capsys):
    hub("org/m", repo_files(**{"model.safetensors": "main weights"}))
    hub("org/m", repo_files(**{"model.safetensors": "v1 weights"}), revision="v1.0")
    hub("org/m", repo_files(**{"model.safetensors": "pinned weights"}), revision="0123abc")
    monkeypatch.setenv("MODEL_REVISION", "v1.0")
    assert models.main(["download", "org/m", "--dest", str(tmp_path / "env")]) == 0
    assert (tmp_path / "env" / "model.safetensors").read_text() == "v1 weights"
    assert "downloading org/m at v1.0" in capsys.readouterr().err
    # --revision wins over the environment; an empty one means the default branch.
    assert models.main(["download", "org/m", "--dest", str(tmp_path / "arg"),
                        "--revision", "0123abc"]) == 0
    assert (tmp_path / "arg" / "model.safetensors").read_text() == "pinned weights"
    monkeypatch.setenv("MODEL_REVISION", "")
    assert models.main(["download", "org/m", "--dest", str(tmp_path / "main")]) == 0
    assert (tmp_path / "main" / "model.safetensors").read_text() == "main weights"


def test_a_folder_missing_the_models_own_code_is_refused(cache, tmp_path):
    folder = tmp_path / "tinyx"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(REMOTE_CODE_CONFIG))
    (folder / "model.safetensors").write_text("weights")
    (folder / "configuration_tinyx.py").write_text("")
    with pytest.raises(models.ModelError, match=r"lacks modeling_tinyx\.py: the model's own code"):
        models.resolve(str(folder))
    (folder / "modeling_tinyx.py").write_text("")
    assert models.resolve(str(folder)) == folder.resolve()


def test_bake_refuses_a_misspelt_model_with_the_kits_message(cache, tmp_path, capsys):
    """An image build with MODEL=SmolLM2-135M-Instruc fails before any download."""
    assert models.main(["download", "SmolLM2-135M-Instruc", "--dest", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "error: MODEL='SmolLM2-135M-Instruc' is neither the embedded" in err
    assert "Did you mean 'SmolLM2-135M-Instruct'?" in err
    assert not (tmp_path / "m").exists()
    with pytest.raises(models.ModelError, match="form 'org/name'"):
        models.bake("org/", tmp_path / "m")


def test_bake_converts_the_embedded_model_from_its_wheel(cache, tmp_path, monkeypatch):
    """The kit's own name never reaches the hub: it is converted into the destination."""
    seen = []

    def convert(gguf, out):
        seen.append(gguf.name)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    monkeypatch.setattr(models, "download", lambda *a: pytest.fail("reached the hub"))
    assert models.bake("smollm2-135m-instruct", tmp_path / "m") == (tmp_path / "m").resolve()
    assert seen == [models._GGUF_FILE]
