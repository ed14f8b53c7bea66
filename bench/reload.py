"""Reload against restart: from an export to the first job the new handler answers.

One local endpoint with one worker (`make serve`'s: --reload), then, side by side in one
run, on the same model:
- reload: export a handler (the default notebook or the word_count recipe, in turn) over
  the worker's file, then send jobs until one is answered by the new handler;
- restart: what a worker without reload needs: stop the endpoint, start it again on the
  new file, wait for its worker (vLLM starts again), then the same job.
The clock starts when the export has written the file, and stops when the first job the
new handler answered comes back. The word_count recipe answers with a `word_count` chunk,
so each answer says which handler wrote it.

    .venv/bin/python -m bench.reload [--model SPEC] [--quick] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench import runner
from bench.machine import machine
from llmkit.endpoint.harness import EndpointProcess
from llmkit.export import export, write
from llmkit.paths import REPO_ROOT

NOTEBOOKS = {False: REPO_ROOT / "notebooks" / "handler_dev.ipynb",
             True: REPO_ROOT / "notebooks" / "recipes" / "word_count.ipynb"}
JOB = {"prompt": "One, two, three,", "answerType": "normal",
       "sampling_params": {"max_tokens": 8, "temperature": 0}}


def answered_by_recipe(endpoint: EndpointProcess) -> bool:
    state = endpoint.runsync(JOB, wait_ms=120000)
    assert state["status"] == "COMPLETED", state
    return "word_count" in state["output"][-1]


def first_answer(endpoint: EndpointProcess, recipe: bool, since: float,
                 timeout: float = 120) -> float:
    """Seconds from ``since`` until a job comes back answered by the wanted handler."""
    while answered_by_recipe(endpoint) != recipe:
        assert time.monotonic() - since < timeout, f"no job on the new handler in {timeout} s"
    return time.monotonic() - since


def start(handler: Path, log: Path) -> EndpointProcess:
    endpoint = EndpointProcess(workers=1, handler=handler, args=["--reload"], log_path=log,
                               endpoint_id="reload-bench")
    endpoint.start()
    endpoint.wait_workers(1)
    return endpoint


def measure(rounds: int, restarts: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="llmkit-bench-reload-"))
    handler = folder / "handler.py"
    texts = {recipe: export(path) for recipe, path in NOTEBOOKS.items()}
    write(handler, texts[False])
    runner.say("starting the worker ...")
    endpoint = start(handler, folder / "endpoint-0.log")
    reload_s, export_s, restart_s = [], [], []
    try:
        assert not answered_by_recipe(endpoint)
        for i in range(rounds):
            recipe = i % 2 == 0  # the recipe, then the default again, ...
            started = time.monotonic()
            write(handler, export(NOTEBOOKS[recipe]))  # what `make export-handler` does
            written = time.monotonic()
            export_s.append(written - started)
            reload_s.append(first_answer(endpoint, recipe, written))
            runner.say(f"reload {i + 1}/{rounds}: {reload_s[-1]:.2f} s")
        recipe = not recipe
        for i in range(restarts):
            started = time.monotonic()
            write(handler, export(NOTEBOOKS[recipe]))
            written = time.monotonic()
            endpoint.stop()
            endpoint = start(handler, folder / f"endpoint-{i + 1}.log")
            restart_s.append(first_answer(endpoint, recipe, written))
            runner.say(f"restart {i + 1}/{restarts}: {restart_s[-1]:.1f} s")
            recipe = not recipe
    finally:
        endpoint.stop()
    reload, restart = statistics.median(reload_s), statistics.median(restart_s)
    return {"reload_s": [round(s, 2) for s in reload_s],
            "restart_s": [round(s, 1) for s in restart_s],
            "export_s": round(statistics.median(export_s), 2),
            "reload_median_s": round(reload, 2), "restart_median_s": round(restart, 1),
            "restart_over_reload": round(restart / reload, 1)}


def report(result: dict) -> str:
    return "\n".join([
        f"Reload against restart ({result['model']}, {result['machine']['cpu']}):",
        f"  export (nbconvert, checks, write): {result['export_s']} s",
        f"  reload:  export -> first job on the new handler: median "
        f"{result['reload_median_s']} s of {result['reload_s']}",
        f"  restart: export -> stop, start, first job:       median "
        f"{result['restart_median_s']} s of {result['restart_s']}",
        f"  restart / reload: {result['restart_over_reload']}x"])


def main() -> None:
    p = runner.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="reloads (default 6)")
    p.add_argument("--restarts", type=int, default=2, help="restarts (default 2)")
    args = p.parse_args()
    runner.setup_env(args)
    result = measure(args.rounds, args.restarts)
    result.update(machine=machine(), model=runner.model_label(args))
    print(report(result))
    runner.write_json(args.json, {"reload": result})


if __name__ == "__main__":
    main()
