"""A job's way through the worker, one stderr line per event, when WORKER_LOOP_TRACE is on.

    loop-trace <wall-clock time> <event> <job id or detail>

The worker loop writes `fetch N` (a take for N jobs sent), `fetched ids` (its reply),
`started` (the job's task made) and `ended`; the SDK's stream posts, `post` and `posted`;
`generate()` writes `engine-in` (the request handed to vLLM), `engine-out` (vLLM's first
output for it) and `first-text` (the first piece leaving the handler); and `gc-2 MS` is a
full garbage collection, which stops the worker's event loop for MS milliseconds. The first-text
benchmark (bench/first_text.py) reads these lines to say where a job's first text waits;
docs/WORKER_LOOP.md shows such a timeline. Off, each call costs one attribute read.
"""

from __future__ import annotations

import gc
import re
import sys
import time

from llmkit.runtime import kit_settings

PREFIX = "loop-trace"
on = False  # set once, by enable(), in the worker that traces


def enable() -> bool:
    """Turn tracing on if WORKER_LOOP_TRACE says so; returns whether it is on."""
    global on
    on = bool(kit_settings.get("worker_loop_trace"))
    if on and _full_collections not in gc.callbacks:
        gc.callbacks.append(_full_collections)
    return on


_gc_started = [0.0]


def _full_collections(phase: str, info: dict) -> None:
    if info["generation"] != 2:
        return
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        event("gc-2", f"{(time.perf_counter() - _gc_started[0]) * 1e3:.1f}")


def event(name: str, detail: str = "") -> None:
    if on:
        print(f"{PREFIX} {time.time():.4f} {name} {detail}", file=sys.stderr, flush=True)


_LINE = re.compile(PREFIX + r" (\d+\.\d+) ([a-z0-9-]+) ?(\S*)")


def parse(lines) -> list[tuple[float, str, str]]:
    """(time, event, detail) for each trace line among ``lines``: a worker's stderr, or a
    log that prefixes its lines (the local endpoint's ``[worker-1] ``)."""
    found = []
    for line in lines:
        m = _LINE.search(line)
        if m:
            found.append((float(m[1]), m[2], m[3]))
    return found
