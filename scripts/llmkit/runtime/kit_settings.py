"""The kit's own settings, each declared once: its variable, type, default, bounds and the
line the docs show. vLLM's engine settings are vLLM's (config.py reads them with its parser).

Everything that reads one of these takes it from here: the worker (config.py), the
load-balancing server, start.sh (``python -m llmkit.runtime.kit_settings --shell``), and the
table in docs/SETTINGS.md (``--markdown``; tests/test_settings.py checks it is current).

A bad value raises SettingsError with one line that names the variable: the worker stops
before any job, and start.sh before anything starts. Declared with pydantic, which vLLM
itself requires (pydantic-settings would add a dependency vLLM does not pin).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import typing
from typing import Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmkit.runtime.errors import SettingsError


class Settings(BaseModel):
    """Field names are the variables' in lowercase. ``description`` is the docs' line."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    mode_to_run: Literal["pod", "serverless", "both", "lb"] = Field(
        "pod", description="`pod` (SSH + Jupyter Lab), `serverless` (the worker), `both`, or "
        "`lb` (the worker as an HTTP server for a load-balancing endpoint: `PORT`, "
        "`PORT_HEALTH`; [LOAD_BALANCING.md](LOAD_BALANCING.md)). Any case")
    model: str = Field(
        "", description="the model: the embedded default's name (`SmolLM2-135M-Instruct`, "
        "`make`'s default), a local folder, or a Hugging Face `org/name`, downloaded only when "
        "an image is built (the image sets it to its baked folder); on Runpod, also a cached "
        "model ([DEPLOY.md](DEPLOY.md#cached-models-an-image-without-a-model)). It becomes "
        "vLLM's `--model`")
    concurrency_modifier: int = Field(
        1, ge=1, le=1024, description="jobs one worker runs at once; vLLM batches them")
    default_max_tokens: int = Field(
        512, ge=1, description="`max_tokens` when a job does not set it")
    stream_interval_ms: int = Field(
        100, ge=0, le=60_000, description="stream mode: the gap between a job's first and "
        "second chunk (the first goes at once); it doubles per chunk. `0`: a chunk per "
        "engine step")
    stream_interval_max_ms: int | None = Field(
        None, le=60_000, description="stream mode: the largest gap between chunks, from "
        "`STREAM_INTERVAL_MS` up; `500` (or `STREAM_INTERVAL_MS` if larger) bounds HTTP "
        "posts to 2/s per job")
    handler_reload: bool = Field(
        False, description="watch `handler.py` and serve each new version on the running "
        "engine; `true` under `make serve` and in `both` "
        "([RUNTIME.md](RUNTIME.md#reload-a-new-handlerpy-without-a-restart))")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the kit's runtime logs, in the runpod SDK's format: "
        "`INFO   \\| <job id> \\| message`, and its JSON on Runpod. vLLM logs as vLLM "
        "configures it")
    worker_loop: Literal["kit", "sdk"] = Field(
        "kit", description="`kit`: the SDK's loop with the kit's fetch timing; `sdk`: the "
        "SDK's own loop, unchanged ([RUNTIME.md](RUNTIME.md#the-worker-loop))")
    worker_loop_trace: bool = Field(
        False, description="one line per step of each job, with the time: take, start, "
        "hand-over to vLLM, vLLM's first output, first text, each stream post, end "
        "([WORKER_LOOP.md](WORKER_LOOP.md#where-a-jobs-first-text-waits))")
    model_id: str = Field(
        "", description="the repo id a baked model came from (set by the image); the "
        "served model name when `SERVED_MODEL_NAME` is not set")
    openai_served_model_name_override: str = Field(
        "", description="the `model` name the OpenAI route serves and `/v1/models` lists; "
        "wins over `SERVED_MODEL_NAME` (as in Runpod's vLLM worker)")
    model_revision: str = Field(
        "", description="a cached model's revision: a branch, tag or commit "
        "([DEPLOY.md](DEPLOY.md#cached-models-an-image-without-a-model))")
    model_cache_dir: str = Field(
        "/runpod-volume/huggingface-cache/hub",
        description="where Runpod's model cache is mounted")
    port: int = Field(80, ge=1, le=65535, description="`lb` mode: the HTTP port")
    port_health: int | None = Field(
        None, ge=1, le=65535, description="`lb` mode: the port of `/ping`; `PORT` if unset")
    host: str = Field("0.0.0.0", description="`lb` mode: the address the server listens on")
    cluster: Literal["off", "ray", "vllm"] = Field(
        "off", description="a Runpod Instant Cluster: node 0 serves one model across every "
        "node, the others give it their GPUs. `ray`: on Ray, as Runpod documents; `vllm`: "
        "vLLM's own multi-node processes, no Ray ([SCALING.md](SCALING.md#more-than-one-"
        "node-instant-clusters))")
    ray_port: int = Field(6379, ge=1, le=65535, description="`CLUSTER=ray`: the port of "
                          "Ray's head on node 0")
    ssh_port: int = Field(22, ge=1, le=65535, description="pod mode: sshd's port")
    jupyter_port: int = Field(8888, ge=1, le=65535, description="pod mode: Jupyter Lab's port")


# What start.sh takes, checked (`--shell`): never a secret, nothing it does not use.
SHELL = ("mode_to_run", "concurrency_modifier", "ssh_port", "jupyter_port", "port",
         "port_health", "cluster", "ray_port")
VARIABLES = {name.upper() for name in Settings.model_fields}


def read(environ) -> Settings:
    """The settings in ``environ``; a SettingsError names the first bad one. An empty
    variable is unset; values may have spaces around them, and any case where a choice is
    a word."""
    given = {}
    for name, field in Settings.model_fields.items():
        raw = environ.get(name.upper(), "").strip()
        if raw:
            given[name] = _normalise(field, raw)
    try:
        settings = Settings(**given)
    except ValidationError as err:
        name = str(err.errors()[0]["loc"][0])
        raise SettingsError(_refused(name, environ.get(name.upper(), "").strip())) from None
    # The defaults that follow another setting.
    interval, most = settings.stream_interval_ms, settings.stream_interval_max_ms
    if most is not None and most < interval:
        raise SettingsError(_refused("stream_interval_max_ms", str(most),
                                     f"an integer from STREAM_INTERVAL_MS ({interval}) to "
                                     "60000"))
    return settings.model_copy(update={
        "stream_interval_max_ms": max(500, interval) if most is None else most,
        "port_health": settings.port_health or settings.port})


def get(name, environ=None):
    """One setting alone, checked, for a module that needs only it (its default must follow
    no other setting's)."""
    variable = name.upper()
    raw = (os.environ if environ is None else environ).get(variable, "")
    return getattr(read({variable: raw}), name)


def _normalise(field, raw):
    choices = _choices(field)
    if choices and choices[0].isupper():
        return {"WARN": "WARNING"}.get(raw.upper(), raw.upper())
    return raw.lower() if choices else raw


def _refused(name, raw, expected=None):
    return f"{name.upper()}={raw!r} is not valid: expected {expected or _expected(name)}"


def _expected(name):
    field = Settings.model_fields[name]
    choices = _choices(field)
    if choices:
        return ", ".join(choices[:-1]) + " or " + choices[-1]
    kind = _kind(field)
    if kind is bool:
        return "true or false"
    if kind is int:
        low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
        high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
        what = "a port" if high == 65535 else "an integer"
        if low is not None and high is not None:
            return f"{what} from {low} to {high}"
        return f"{what} >= {low}" if low is not None else f"{what} <= {high}"
    return "text"


def _kind(field):
    kinds = [k for k in typing.get_args(field.annotation) if k is not type(None)]
    return kinds[0] if kinds else field.annotation


def _choices(field):
    return list(typing.get_args(field.annotation)) \
        if typing.get_origin(field.annotation) is Literal else []


def markdown() -> str:
    """The table in docs/SETTINGS.md: a row per setting, in declaration order."""
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default in (None, "") else f"`{_shown(field.default)}`"
        rows.append(f"| `{name.upper()}` | {default} | {_expected(name)} | "
                    f"{field.description} |")
    return "\n".join(rows) + "\n"


def _shown(value):
    return str(value).lower() if isinstance(value, bool) else value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.runtime.kit_settings",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shell", action="store_true",
                        help="print the values start.sh uses, checked, as shell assignments")
    parser.add_argument("--markdown", action="store_true", help="print the docs' table")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    try:
        settings = read(os.environ)
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    if args.shell:
        for name in SHELL:
            print(f"{name.upper()}={shlex.quote(str(getattr(settings, name)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
