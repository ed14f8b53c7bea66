"""5. Cold start: from process start to ready, and to the first token.

Each case runs in a fresh process, one after the other:
- handler: what a worker does (`python build/handler.py` minus the job loop): import
  vLLM and handler.py, then, as the runtime's serve() does, import the runpod SDK in a
  thread while the engine starts, then one stream job;
- raw vLLM: import vLLM, AsyncLLMEngine.from_engine_args() with the handler's engine
  settings, then one generate();
- with --overlap on, raw vLLM + `import runpod` in a thread started before the engine:
  the handler's overlap without the rest of the kit.
The kit's own cost is what the handler case spends beyond the raw one: handler.py's
import and whatever of the runpod SDK import outlasts the engine start (the engine
start is the same call).

    .venv/bin/python -m bench.cold_start [--quick] [--models tiny,default] [--json OUT]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

T_PROCESS = time.time()  # as early as this module allows: before any heavy import

from bench import runner, stats, workload  # noqa: E402  (std-lib only at import)

PHASES = ["python up", "import vllm", "vllm engine API", "import runpod SDK",
          "import handler.py", "engine start", "first token"]


def add_args(p) -> None:
    p.add_argument("--models", default=None,
                   help="comma list of tiny, default or a MODEL spec (tiny,default; quick tiny)")
    p.add_argument("--raw", default=None,
                   help="models that also get a raw vLLM start (default; quick none)")
    p.add_argument("--overlap", default=None, choices=["on", "off"],
                   help="also raw vLLM with `import runpod` in a thread during engine start: "
                        "without the kit's own code (off)")
    p.add_argument("--child", choices=["handler", "raw", "overlap"], help=argparse_hidden())


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def child(kind: str, handler_path: str) -> None:
    """Runs in the fresh process; prints one JSON line of wall-clock marks."""
    import asyncio

    marks: dict = {"python up": T_PROCESS}
    import vllm  # noqa: F401

    marks["import vllm"] = time.time()
    from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams  # noqa: F401

    marks["vllm engine API"] = time.time()
    if kind == "handler":
        from llmkit import handler_module
        from llmkit.runtime import config, vllm_engine
        from llmkit.runtime.jobs import job_function

        h = handler_module.load(handler_path, "cold_handler")
        job = job_function(h.handler)
        marks["import handler.py"] = time.time()
        engine_args = {k: v for k, v in config.load().engine_args.items() if v is not None}
    else:
        engine_args = raw_engine_args()
    if kind in ("handler", "overlap"):
        import threading

        def import_runpod():
            import runpod  # noqa: F401

            marks["runpod imported"] = time.time()

        importer = threading.Thread(target=import_runpod)
        importer.start()

    async def run() -> None:
        if kind == "handler":
            engine = vllm_engine.engine()
            marks["engine start"] = time.time()
            importer.join()  # the worker loop can start only now
            marks["runpod wait after engine"] = time.time() - marks["engine start"]
            async for _ in job({"id": "cold", "input": workload.job_input(0, 4)}):
                marks.setdefault("first token", time.time())
        else:
            engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args))
            marks["engine start"] = time.time()
            if kind == "overlap":  # the worker loop could start only now
                importer.join()
                marks["runpod wait after engine"] = time.time() - marks["engine start"]
            params = SamplingParams(max_tokens=4, min_tokens=4, temperature=0)
            async for _ in engine.generate("What is the capital of France?", params, "cold"):
                marks.setdefault("first token", time.time())
        engine.shutdown()

    asyncio.run(run())
    marks["engine_args"] = engine_args
    print("COLD_START " + json.dumps(marks, default=str), flush=True)


def raw_engine_args() -> dict:
    """The runtime's engine arguments with no env overrides, restated without the kit.

    measure() checks that the handler case started vLLM with the same arguments."""
    from vllm.platforms import current_platform

    cpu = current_platform.is_cpu()
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                              ",".join(map(str, sorted(os.sched_getaffinity(0)))))
    model = os.environ["MODEL"]
    args = {"model": model, "served_model_name": [os.path.basename(model.rstrip("/"))],
            "gpu_memory_utilization": 0.3 if cpu else 0.90}
    if cpu:
        args.update(dtype="float32", enforce_eager=True)
    if os.environ.get("GPU_MEMORY_UTILIZATION"):
        args["gpu_memory_utilization"] = float(os.environ["GPU_MEMORY_UTILIZATION"])
    return args


def _run_child(kind: str, model_dir: str, handler_path: str) -> dict:
    env = {**os.environ, "MODEL": model_dir, "PYTHONUNBUFFERED": "1"}
    for var in ("DTYPE", "ENFORCE_EAGER", "MAX_MODEL_LEN", "ENABLE_PREFIX_CACHING"):
        env.pop(var, None)  # the handler's defaults, as the raw case restates them
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "bench.cold_start", "--child", kind,
                          "--handler", handler_path],
                         cwd=runner.REPO, env=env, capture_output=True, text=True, timeout=900)
    t_end = time.time()
    line = next((x for x in out.stdout.splitlines() if x.startswith("COLD_START ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"cold start child ({kind}) failed:\n{out.stdout[-2000:]}"
                           f"\n{out.stderr[-3000:]}")
    marks = json.loads(line.split(" ", 1)[1])
    engine_args = marks.pop("engine_args")
    extra = {k: marks.pop(k) for k in ("runpod imported", "runpod wait after engine")
             if k in marks}
    phases, prev = {}, t0
    for name in PHASES:
        if name in marks:
            phases[name] = marks[name] - prev
            prev = marks[name]
    wait = extra.get("runpod wait after engine", 0.0)
    if "runpod wait after engine" in extra:
        phases["import runpod SDK"] = wait
        phases["first token"] -= wait
    ready = marks["engine start"] - t0 + wait
    return {"phases_s": phases, "ready_s": ready, "first_token_s": marks["first token"] - t0,
            "process_s": t_end - t0, "engine_args": engine_args,
            **({"runpod_wait_after_engine_s": extra["runpod wait after engine"],
                "runpod_import_s": extra["runpod imported"]
                           - marks.get("import handler.py", marks["vllm engine API"])}
               if extra else {})}


def _resolve(name: str) -> tuple[str, str]:
    from llmkit import models, tiny_model

    if name == "tiny":
        return "tiny-llama (random, 0.4 M params)", str(tiny_model.build())
    if name == "default" or name.lower() == runner.DEFAULT_MODEL.lower():
        return runner.DEFAULT_MODEL, str(models.resolve(runner.DEFAULT_MODEL))
    return name, str(models.resolve(name))


def measure(ctx: runner.Context, args) -> dict:
    main = args.model or "default"
    names = (args.models or ("tiny" if args.quick else f"tiny,{main}")).split(",")
    raw_names = (args.raw if args.raw is not None else ("" if args.quick else main))
    raw_names = [x for x in raw_names.split(",") if x]
    handler_path = str(args.handler)
    cases = []
    for name in names:
        label, folder = _resolve(name)
        runner.say(f"cold start: handler, {label} ...")
        cases.append({"model": label, "path": "handler", **_run_child("handler", folder,
                                                                      handler_path)})
        if name in raw_names:
            runner.say(f"cold start: raw vLLM, {label} ...")
            raw = {"model": label, "path": "raw vLLM", **_run_child("raw", folder, handler_path)}
            if raw["engine_args"] != cases[-1]["engine_args"]:
                raise RuntimeError(f"the raw case started vLLM with {raw['engine_args']}, "
                                   f"handler.py with {cases[-1]['engine_args']}")
            cases.append(raw)
        if args.overlap == "on" and name in raw_names:
            runner.say(f"cold start: raw vLLM + runpod imported during engine start, {label} ...")
            cases.append({"model": label, "path": "raw vLLM + import runpod in a thread",
                          **_run_child("overlap", folder, handler_path)})
    ratios = []
    for case in cases:
        p = case["phases_s"]
        case["kit_s"] = p.get("import runpod SDK", 0) + p.get("import handler.py", 0)
        if case["path"] == "handler":
            ratios.append(stats.ratio(f"kit's share of ready time, {case['model']}",
                                      case["kit_s"] / case["ready_s"], None,
                                      f"{case['kit_s']:.1f} s of {case['ready_s']:.1f} s"))
    return {"cases": cases, "ratios": ratios}


def report(r: dict) -> str:
    rows = []
    for case in r["cases"]:
        p = case["phases_s"]
        rows.append([case["model"], case["path"], *[stats.fmt(p.get(x)) for x in PHASES],
                     case["ready_s"], case["first_token_s"], case["kit_s"]])
    return "\n".join([
        "## 5. Cold start, seconds (fresh process each; phases in order)",
        stats.table(["model", "path", *PHASES, "ready", "first token at", "kit's own"], rows),
        "ready = process start -> engine started (a worker then polls for jobs); "
        "kit's own = handler.py import + the part of the runpod SDK import (in a thread "
        "beside the engine start) that outlasts the engine start",
        *[f"{x['path']}, {x['model']}: the import took {x['runpod_import_s']:.1f} s beside "
          f"the engine start and left {x['runpod_wait_after_engine_s']:.2f} s to wait after it"
          for x in r["cases"] if "runpod_import_s" in x],
        stats.ratio_lines(r["ratios"]),
    ])


if __name__ == "__main__":
    if "--child" in sys.argv:
        p = runner.parser("child")
        add_args(p)
        a = p.parse_args()
        child(a.child, str(a.handler))
    else:
        runner.script_main("cold_start", __doc__, add_args, measure, report)
