"""Load the exported handler.py as a module, the way tests and tools call it in-process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load(path: str | Path, name: str = "exported_handler") -> ModuleType:
    """Import ``path`` under ``name``. Importing starts no engine: the handler does that."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make export-handler` first")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
