"""The capacity model (bench/capacity.py) against the local endpoint: the same Poisson
arrivals, replayed against 1, 2 and 4 workers, and the model's prediction for each.

First it measures this machine's worker figures for the job it sends (the embedded model,
16 tokens): one worker at CONCURRENCY_MODIFIER M, closed loops at 1, 2 .. M jobs at once,
each job's service time as the endpoint records it (executionTime) and its take (delayTime
on an idle worker). Then each worker count gets the same arrivals. Wait and latency are
the endpoint's own (delayTime, delayTime + executionTime), so the client's polling does
not count.

On this 2-core machine the workers share the cores: two workers do not serve twice what
one does, and the model, which takes workers to be machines of their own (as on Runpod),
predicts too little wait there. The table shows by how much.

    .venv/bin/python -m bench.capacity_check [--modifier 4] [--rate R] [--duration 90]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from bench import capacity, stats
from llmkit.endpoint.harness import EndpointProcess
from llmkit.job_inputs import exact_tokens

TOKENS = 16


def job(i: int) -> dict:
    return exact_tokens(TOKENS, f"Request {i}: tell me about the sea", stream=False)


def finished(endpoint, job_id) -> tuple[float, float]:
    """(wait, service) in seconds, as the endpoint recorded them."""
    state = endpoint.wait_final(job_id, timeout=600)
    assert state["status"] == "COMPLETED", state
    return state["delayTime"] / 1000, state["executionTime"] / 1000


def closed_loop(endpoint, k: int, per_client: int) -> tuple[list, list, float]:
    """k clients, each submitting its next job when its last ends: (services, waits, s)."""
    seen, lock = [], threading.Lock()

    def client(c):
        for j in range(per_client):
            result = finished(endpoint, endpoint.run(job(c * 100 + j)))
            with lock:
                seen.append(result)

    begun = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [s for _, s in seen], [w for w, _ in seen], time.monotonic() - begun


def measure_figures(endpoint, modifier: int, per_client: int) -> capacity.WorkerFigures:
    levels, takes = [], []
    finished(endpoint, endpoint.run(job(-1)))  # warm
    for k in sorted({1, *[2 ** i for i in range(1, 8) if 2 ** i <= modifier], modifier}):
        services, waits, made = closed_loop(endpoint, k, per_client)
        takes += waits if k == 1 else []  # an idle worker's take
        level = capacity.Level(jobs=k, jobs_s=len(services) / made,
                               service_p50_s=stats.pct(services, 50),
                               service_p95_s=stats.pct(services, 95),
                               ttft_s=0.0)  # not compared here: the replay's figure is latency
        print(f"figures at {k} at once: {level}", flush=True)
        levels.append(level)
    return capacity.WorkerFigures(levels=tuple(levels), cold_start_s=0.0,
                                  take_s=stats.pct(takes, 50), label="this machine")


def replay(endpoint, arrivals) -> list[tuple[float, float]]:
    """Submit a job at each arrival time; read their records once all are in. Nothing
    polls while jobs run: on 2 cores, clients polling would slow the workers they time."""
    ids, start = [], time.monotonic()
    for i, at in enumerate(arrivals):
        time.sleep(max(0.0, at - (time.monotonic() - start)))
        ids.append(endpoint.run(job(i)))
    time.sleep(5)
    return [finished(endpoint, job_id) for job_id in ids]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--modifier", type=int, default=4)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--rate", type=float, default=None,
                        help="jobs/s (default: 0.6 x one worker's measured throughput)")
    parser.add_argument("--duration", type=float, default=90.0)
    parser.add_argument("--per-client", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with EndpointProcess(workers=1, concurrency=args.modifier) as endpoint:
        endpoint.wait_workers(1, timeout=900)
        figures = measure_figures(endpoint, args.modifier, args.per_client)
    rate = args.rate or 0.6 * figures.jobs_s(args.modifier)
    arrivals = capacity.poisson_arrivals(rate, args.duration, args.seed)
    print(f"replaying {len(arrivals)} arrivals at {rate:.3f} jobs/s over {args.duration:.0f} s",
          flush=True)
    rows = []
    for n in [int(x) for x in args.workers.split(",")]:
        predicted = capacity.simulate(figures, args.modifier, capacity.fixed_workers(n),
                                      arrivals=arrivals, duration_s=args.duration).summary()
        with EndpointProcess(workers=n, concurrency=args.modifier) as endpoint:
            endpoint.wait_workers(n, timeout=1200)
            seen = replay(endpoint, arrivals)
        waits, latencies = [w for w, _ in seen], [w + s for w, s in seen]
        row = {"workers": n, "predicted_p95_wait_s": predicted["p95_wait_s"],
               "measured_p95_wait_s": stats.pct(waits, 95),
               "predicted_p95_latency_s": predicted["p95_latency_s"],
               "measured_p95_latency_s": stats.pct(latencies, 95),
               "measured_p50_latency_s": stats.pct(latencies, 50)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{len(arrivals)} jobs of {TOKENS} tokens at {rate:.3f} jobs/s, modifier "
          f"{args.modifier}; one worker alone: {figures.jobs_s(args.modifier):.2f} jobs/s\n")
    print("| workers | p95 wait, model | p95 wait, measured | p95 latency, model | "
          "p95 latency, measured | measured / model (latency) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['predicted_p95_wait_s']:.2f} s | "
              f"{r['measured_p95_wait_s']:.2f} s | {r['predicted_p95_latency_s']:.2f} s | "
              f"{r['measured_p95_latency_s']:.2f} s | "
              f"{r['measured_p95_latency_s'] / r['predicted_p95_latency_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"figures": figures.to_dict(), "rate": rate, "rows": rows}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
