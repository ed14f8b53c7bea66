"""Run every benchmark in one go (`make bench`), sharing engines between them.

The three that need fresh processes (cold start, CPU settings, first text: each starts
its own engines, one at a time) run first, as their own scripts, while nothing else
runs. Then one in-process engine and the local endpoints (CONCURRENCY_MODIFIER 1 and 16)
serve the other five. With --write-docs the figures
go to docs/BENCHMARKS.md and docs/concurrency.png, and all numbers to
bench/results/latest.json.

    .venv/bin/python -m bench.run_all [--quick] [--model SPEC] [--write-docs]
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import machine, runner, stats

SUBPROCESS = ["cold_start", "cpu_settings", "first_text"]
IN_PROCESS = ["handler_overhead", "ttft_chunks", "worker_loop", "concurrency", "openai_route"]
ALL = SUBPROCESS[:1] + IN_PROCESS + SUBPROCESS[1:]


def forwarded(args) -> list[str]:
    out = ["--handler", str(args.handler)]
    if args.quick:
        out.append("--quick")
    if args.model:
        out += ["--model", args.model]
    if args.verbose:
        out.append("--verbose")
    return out


def command(name: str, args) -> str:
    extra = " --quick" if args.quick else ""
    extra += f" --model {args.model}" if args.model else ""
    return f".venv/bin/python -m bench.{name}{extra}"


def _start_subprocess(name: str, args, out_dir: Path, background: bool):
    js = out_dir / f"{name}.json"
    cmd = [sys.executable, "-m", f"bench.{name}", *forwarded(args), "--json", str(js)]
    if background:
        log = (out_dir / f"{name}.log").open("w")
        return js, subprocess.Popen(cmd, cwd=runner.REPO, stdout=log, stderr=subprocess.STDOUT)
    return js, subprocess.Popen(cmd, cwd=runner.REPO)


def main(argv: list[str] | None = None) -> int:
    p = runner.parser(__doc__)
    p.add_argument("--only", default=None, help=f"comma list out of {','.join(ALL)}")
    p.add_argument("--write-docs", action="store_true",
                   help="write docs/BENCHMARKS.md, docs/concurrency.png, bench/results/")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    p.add_argument("--merge", action="store_true",
                   help="keep the other benchmarks' figures from bench/results/latest.json "
                        "(rerun one with --only, then refresh the docs)")
    args = p.parse_args(argv)
    only = args.only.split(",") if args.only else ALL
    unknown = set(only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    out_dir = Path(tempfile.mkdtemp(prefix="llmkit-bench-all-"))
    t_start = time.monotonic()
    load_start = os.getloadavg()[0]
    results: dict = {}
    failed: list[str] = []

    # Fresh-process benchmarks: alone on the machine, first. In --quick (a smoke
    # test, timings not meaningful) they run beside the others to save time.
    subs = [n for n in SUBPROCESS if n in only]
    background = {}
    for name in subs:
        js, proc = _start_subprocess(name, args, out_dir, background=args.quick)
        if args.quick:
            background[name] = (js, proc)
        else:
            runner.say(f"=== {name}: {command(name, args)}")
            if proc.wait() != 0:
                failed.append(name)
            elif js.is_file():
                results.update(json.loads(js.read_text()))

    ctx = runner.Context(args)
    engine_starts: dict = {}
    try:
        uses_both = {"ttft_chunks", "worker_loop", "concurrency"} & set(only)
        if uses_both or "openai_route" in only:
            # The endpoints' workers start beside the in-process engine, and nothing is
            # measured until all are up (so their start times overlap: they are not
            # cold-start figures; cold_start has those). openai_route uses modifier 16.
            modifiers = [2] if args.quick else [1, 16] if uses_both else [16]
            ctx.prestart(modifiers)
            ctx.inproc()
            for m in modifiers:
                ctx.endpoint(m)
        for name in [n for n in IN_PROCESS if n in only]:
            mod = importlib.import_module(f"bench.{name}")
            sp = runner.parser(name)
            mod.add_args(sp)
            margs = sp.parse_args(forwarded(args))
            runner.say(f"=== {name}: {command(name, args)}")
            t0 = time.monotonic()
            try:
                res = mod.measure(ctx, margs)
            except Exception as err:  # report the others anyway
                runner.say(f"{name} failed: {type(err).__name__}: {err}")
                failed.append(name)
                continue
            res["model"] = runner.model_label(args)
            res["seconds"] = time.monotonic() - t0
            results[name] = res
            print(mod.report(res) + "\n", flush=True)
            engine_starts.update(ctx.starts)
    finally:
        ctx.close()

    for name, (js, proc) in background.items():
        if proc.wait() != 0:
            failed.append(name)
            runner.say(f"{name} failed; its log: {js.with_suffix('.log')}")
        elif js.is_file():
            results.update(json.loads(js.read_text()))
            mod = importlib.import_module(f"bench.{name}")
            print(mod.report(results[name]) + "\n", flush=True)

    for name in ALL:
        if name in results:
            results[name]["ran_at"] = time.strftime("%Y-%m-%d %H:%M %Z")
    latest = runner.REPO / "bench" / "results" / "latest.json"
    if args.merge and latest.is_file():
        previous = json.loads(latest.read_text())
        if previous.get("_run", {}).get("model") != runner.model_label(args):
            p.error(f"--merge: {latest} holds figures for another model")
        for name in ALL:
            if name not in results and name in previous:
                results[name] = previous[name]
                results[name].setdefault("ran_at", previous["_run"]["date"])
                results[name].setdefault("machine", previous["_run"]["machine"])
        engine_starts = {**previous["_run"].get("engine_starts_s", {}), **engine_starts}
    merged = sorted(n for n in ALL if n in results and n not in only)
    info = {"merged": merged, "machine": machine.machine(), "model": runner.model_label(args),
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "engine_starts_s": engine_starts,
            "total_s": time.monotonic() - t_start, "failed": failed,
            "load_1min": [load_start, os.getloadavg()[0]],
            "commands": {n: command(n, args) for n in ALL}}
    results["_run"] = info
    ratios = [r for name in ALL if name in results for r in results[name].get("ratios", [])]
    print("## Summary")
    print(stats.ratio_lines([r for r in ratios if r["target"] is not None]))
    print(f"total {info['total_s'] / 60:.1f} min on {info['machine']['description']}")
    if failed:
        print(f"FAILED to run: {', '.join(failed)}")
    if args.json:
        runner.write_json(args.json, results)
    if args.write_docs:
        from bench import docs

        runner.write_json(latest, results)
        docs.write(results, runner.REPO / "docs")
        runner.say("wrote docs/BENCHMARKS.md, docs/concurrency.png, bench/results/latest.json")
    if failed or (args.strict and any(r["verdict"] == "FAIL" for r in ratios)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
