"""3. Concurrency scaling: aggregate tokens/s and p50/p95 job latency at 1..16 jobs.

Three paths at each level, alternating: raw vLLM (the handler's engine, C concurrent
generate() calls), the handler in process (C concurrent handler(job) consumers) and
the local endpoint (C clients each submitting with /run and reading /stream, served
by one SDK worker running handler.py with CONCURRENCY_MODIFIER >= C). Clients run
closed loops: each submits its next job when its last one ends.

The worker's modifier: `--modifiers 1,16` (default) starts two endpoints, modifier 1
for level 1 and 16 for the rest; `--modifiers 1,2,4,8,16` matches every level
exactly, at one engine start per level.

    .venv/bin/python -m bench.concurrency [--quick] [--plot docs/concurrency.png]
"""

from __future__ import annotations

from pathlib import Path

from bench import runner, stats, workload

TARGET = 0.90
PATHS = ["raw vLLM", "handler", "endpoint"]


def add_args(p) -> None:
    p.add_argument("--levels", default=None, help="concurrency levels (1,2,4,8,16; quick 1,2)")
    p.add_argument("--modifiers", default=None,
                   help="CONCURRENCY_MODIFIER of the endpoints to start (1,16; quick 2)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per job (64; quick 32)")
    p.add_argument("--no-endpoint", action="store_true", help="raw vs handler only")
    p.add_argument("--plot", type=Path, default=None, help="write the plot (PNG) here")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def jobs_per_client(level: int, quick: bool) -> int:
    if quick:
        return 2
    return 2 if level == 1 else 1


def measure(ctx: runner.Context, args) -> dict:
    levels = _ints(args.levels or ("1,2" if args.quick else "1,2,4,8,16"))
    modifiers = sorted(_ints(args.modifiers or ("2" if args.quick else "1,16")))
    tokens = args.tokens or (32 if args.quick else 64)
    ip = ctx.inproc()
    paths = PATHS[:2] if args.no_endpoint else PATHS

    def modifier_for(level: int) -> int:
        fits = [m for m in modifiers if m >= level]
        if not fits:
            raise SystemExit(f"no modifier >= {level} in --modifiers {modifiers}")
        return fits[0]

    eps = {}
    if not args.no_endpoint:
        for m in sorted({modifier_for(lv) for lv in levels}):
            eps[m] = ctx.endpoint(m)

    async def warm():
        await ip.raw_job(workload.job_input(0, 8))
        await ip.handler_job(workload.job_input(0, 8))
        for ep in eps.values():
            await ep.stream_job(workload.job_input(0, 8))

    ctx.run(warm())
    def job_fn(path: str, level: int):
        if path == "raw vLLM":
            async def job(i):
                inp = workload.job_input(i, tokens)
                return await ip.raw_job(inp, ip.prepare(inp))
        elif path == "handler":
            async def job(i):
                return await ip.handler_job(workload.job_input(i, tokens))
        else:
            ep = eps[modifier_for(level)]

            async def job(i):
                return await ep.stream_job(workload.job_input(i, tokens))
        return job

    results: dict[str, dict[int, dict]] = {p: {} for p in paths}
    for n, level in enumerate(levels):
        jpc = jobs_per_client(level, args.quick)
        # The target's level gets two rounds per path (A,B,C,C,B,A); the others one.
        rounds = 2 if level == max(levels) and not args.quick else 1
        order = workload.interleave(paths if n % 2 == 0 else paths[::-1], rounds)
        done: dict[str, list[workload.Round]] = {p: [] for p in paths}
        for path in order:
            done[path].append(ctx.run(workload.closed_loop(job_fn(path, level), level, jpc)))
            s = done[path][-1].summary()
            runner.say(f"C={level:<2} {path:9} {s['tok_s']:7.1f} tok/s  p50 {s['p50_s']:.2f} s")
        for path, rnds in done.items():
            jobs = [j for r in rnds for j in r.jobs]
            merged = workload.Round(level, sum(r.makespan for r in rnds), jobs)
            s = merged.summary()
            s["rounds"] = len(rnds)
            s["tok_s"] = stats.median([r.tok_s for r in rnds])
            if path == "endpoint":
                s["modifier"] = modifier_for(level)
            results[path][level] = s
    ratios = []
    for level in levels:
        raw = results["raw vLLM"][level]["tok_s"]
        for path in paths[1:]:
            target = TARGET if (level == max(levels) and path == "endpoint") else None
            ratios.append(stats.ratio(f"{path}/raw tok/s at {level}",
                                      results[path][level]["tok_s"] / raw, target))
    if args.no_endpoint:
        ratios.append(stats.ratio(f"endpoint/raw tok/s at {max(levels)}", None, TARGET,
                                  "endpoint not measured"))
    out = {"levels": levels, "tokens_per_job": tokens, "modifiers": modifiers,
           "results": {p: {str(k): v for k, v in r.items()} for p, r in results.items()},
           "ratios": ratios}
    if args.plot:
        plot(out, args.plot, runner.model_label(args))
    return out


def report(r: dict) -> str:
    rows = []
    for level in r["levels"]:
        row = [level]
        for path in PATHS:
            s = r["results"].get(path, {}).get(str(level))
            row += [s["tok_s"], f"{s['p50_s']:.2f} / {s['p95_s']:.2f}"] if s else ["-", "-"]
        ep = r["results"].get("endpoint", {}).get(str(level))
        row.append(ep["modifier"] if ep else "-")
        rows.append(row)
    headers = ["jobs at once"]
    for path in PATHS:
        headers += [f"{path} tok/s", f"{path} p50/p95 s"]
    headers.append("modifier")
    return "\n".join([
        f"## 3. Concurrency scaling ({r['model']}, {r['tokens_per_job']} tokens/job, "
        "closed-loop clients)",
        stats.table(headers, rows),
        stats.ratio_lines(r["ratios"]),
    ])


def plot(r: dict, path: Path, model: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    styles = {"raw vLLM": ("k", "o", "-"), "handler": ("tab:blue", "s", "--"),
              "endpoint": ("tab:orange", "^", "-.")}
    labels = {"raw vLLM": "raw vLLM (AsyncLLM.generate)", "handler": "handler, in process",
              "endpoint": "local endpoint + SDK worker loop"}
    for name, res in r["results"].items():
        xs = [lv for lv in r["levels"] if str(lv) in res]
        color, marker, ls = styles[name]
        ax.plot(xs, [res[str(x)]["tok_s"] for x in xs], color=color, marker=marker,
                linestyle=ls, label=labels[name])
    ax.set_xscale("log", base=2)
    ax.set_xticks(r["levels"], [str(x) for x in r["levels"]])
    mods = {lv: res["modifier"] for lv, res in r["results"].get("endpoint", {}).items()}
    note = ", ".join(f"{m} at {lv}" for lv, m in mods.items())
    ax.set_xlabel("concurrent jobs (closed-loop clients)"
                  + (f"; endpoint CONCURRENCY_MODIFIER {note}" if note else ""), fontsize=8)
    ax.set_ylabel("aggregate tokens/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Throughput vs concurrency, {model}, {r['tokens_per_job']} tokens/job",
                 fontsize=10)
    machine = r.get("machine", {}).get("description")
    if machine:
        fig.text(0.01, 0.01, machine, fontsize=6, color="gray")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    runner.script_main("concurrency", __doc__, add_args, measure, report)
