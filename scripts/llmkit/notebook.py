"""What the development notebook calls, so that it holds little besides the user's cells.

    from llmkit.notebook import playground, setup

    setup(model=model, max_model_len=max_model_len)   # the model, and the worker's settings
    playground(handler)                               # prompt the model through the handler
"""

from __future__ import annotations

import os

from llmkit import explain_asserts
from llmkit.playground import playground

__all__ = ["playground", "setup"]

# In a cell's output, vLLM's INFO lines bury the cell's own; its warnings still show. Set
# before the notebook imports vLLM, which reads it once; VLLM_LOGGING_LEVEL=INFO brings all back.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def setup(model: str | os.PathLike | None = "", **settings) -> str:
    """Get the notebook ready, as the worker is: returns the model's folder.

    ``model``: a folder, the embedded default's name or an org/name in Runpod's model cache;
    empty keeps the environment's MODEL (a pod's baked model), else the embedded default,
    which is converted once. ``settings``: any engine or kit setting by its variable's name
    in lowercase (``max_model_len=4096``, ``enforce_eager=True``); empty or None keeps the
    environment's value. They go where the worker reads them, the environment, and are
    checked when the engine starts. After setup, a failing `assert` in a cell says what it
    got (explain_asserts.py).
    """
    from llmkit.models import resolve

    os.environ["MODEL"] = str(resolve(model or os.environ.get("MODEL")))
    for name, value in settings.items():
        if value not in ("", None):
            os.environ[name.upper()] = str(value)
    explain_asserts.register()
    print("MODEL =", os.environ["MODEL"])
    return os.environ["MODEL"]
