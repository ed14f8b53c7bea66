"""Where the kit keeps what it makes: one cache directory, overridable by env."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The exported handler, where `make export-handler` writes it.
HANDLER_PATH = REPO_ROOT / "build" / "handler.py"


def cache_dir() -> Path:
    """`$LLMKIT_CACHE_DIR`, else `~/.cache/runpod-llm-kit`."""
    root = os.environ.get("LLMKIT_CACHE_DIR") or Path.home() / ".cache" / "runpod-llm-kit"
    return Path(root)
