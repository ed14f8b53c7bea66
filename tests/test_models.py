"""MODEL resolution: the embedded default, folders, hub ids; clear errors; atomic conversion."""

from __future__ import annotations

import pytest

from llmkit import models


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
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
    with pytest.raises(models.ModelError, match="'org/some' is not in the local Hugging Face"):
        models.resolve("org/some")


def test_nonsense_spec(cache):
    with pytest.raises(models.ModelError, match="neither 'SmolLM2-135M-Instruct'"):
        models.resolve("a/b/c")


def test_cli_reports_errors_without_traceback(cache, capsys):
    assert models.main(["prepare", "org/absent"]) == 1
    assert "error: MODEL='org/absent' is not in the local" in capsys.readouterr().err


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
