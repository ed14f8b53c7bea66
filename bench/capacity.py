"""Capacity model of Runpod Serverless: how many workers, which CONCURRENCY_MODIFIER, and
the p95 time to first token (TTFT) and p95 latency to expect, from a worker's measured
figures and a workload. A small discrete-event simulation, deterministic for a seed.

    .venv/bin/python -m bench.capacity plan --figures FILE --rate 2 --ttft-p95 1.0
    .venv/bin/python -m bench.capacity simulate --figures FILE --rate 2 --modifier 4
    .venv/bin/python -m bench.capacity figures --results bench/results/latest.json

Runpod's scaling, as its docs describe it
(https://docs.runpod.io/serverless/endpoints/endpoint-configurations,
https://docs.runpod.io/serverless/pricing):
- Queue delay: workers are added when requests wait in the queue longer than a
  threshold (default 4 s).
- Request count: total workers = ceil((requests in queue + requests in progress) / N)
  (default N = 4).
- Active (min) workers always run (default 0); max workers caps the count (default 3).
- Idle timeout: a worker runs on this long after its last job (default 5 s); the docs say
  it takes effect only with queue delay scaling.
- Billing runs from the signal to start a worker until it has stopped: the cold start and
  idle time are paid for. Worker-seconds here count the same span.

What the model assumes on top (none of it is documented by Runpod; check it first):
- The scaler looks every `tick_s` (default 1 s) and acts at once.
- Queue delay adds one worker per job that has waited over the threshold, less workers
  already starting (the platform counts jobs, not slots); a worker idle for the idle
  timeout is stopped at the next look, never below min workers.
- Request count starts workers up to the formula's target, and stops a worker above it
  once the worker has been idle for the idle timeout. The docs say the idle timeout
  takes effect only with queue delay; read literally (`request_count_idle_timeout=False`)
  an idle worker above the target stops at once, and the model then restarts workers
  all the time, a cold start each, though the same page recommends request count for
  LLM workloads. So the model applies the idle timeout to both by default.
- A started worker is never cancelled; it serves after the measured cold start.
- Active workers, and the fixed workers of `fixed_workers`, are warm at time 0.
- Jobs go first-in first-out to the ready worker with the most free slots (ties: the
  oldest); each take costs the measured take overhead, during which the slot is held.
- A job's work is shared in a worker like vLLM's batch: with k jobs in flight each job
  runs at the speed at which, at a steady k, it would take its service time at k. That
  service time is interpolated in k between the measured modifiers (p50 and p95; a job's
  spread is lognormal and its rank within that spread is fixed when it arrives).
- A job's first token comes the measured TTFT at its load (k when it starts, itself
  included) after its start, with no spread.
- TTFT and latency count from the job's submission; wait is submission to start (take
  overhead included). Percentiles count jobs submitted in [warmup, duration]; worker-
  seconds run from warmup until the last job has ended and the workers have scaled down.
- The simulation uses the service times; the measured throughput only sets where the
  plan starts its search (rate / throughput workers; fewer cannot keep up).
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import stats

Z95 = 1.6448536269514722  # the standard normal's 95th percentile


# --- A worker's figures ---------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    """One worker with `jobs` jobs in flight at once (its CONCURRENCY_MODIFIER >= jobs)."""
    jobs: int
    jobs_s: float           # throughput, jobs/s
    service_p50_s: float    # one job, start to end
    service_p95_s: float
    ttft_s: float           # start to first token


@dataclass(frozen=True)
class WorkerFigures:
    levels: tuple[Level, ...]   # sorted by jobs in flight
    cold_start_s: float         # container start to ready for its first job
    take_s: float               # a queued job to its take, when a slot is free
    label: str = ""
    example: bool = False       # True only for the built-in, invented EXAMPLE

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("figures need at least one level (modifier)")
        object.__setattr__(self, "levels", tuple(sorted(self.levels, key=lambda lv: lv.jobs)))

    @property
    def modifiers(self) -> list[int]:
        return [lv.jobs for lv in self.levels]

    def level(self, m: int) -> Level:
        return next(lv for lv in self.levels if lv.jobs == m)

    def at(self, k: float) -> tuple[float, float, float]:
        """(service p50, lognormal sigma, ttft) with k jobs in flight."""
        def row(lv: Level):
            sigma = math.log(max(lv.service_p95_s / lv.service_p50_s, 1.0)) / Z95
            return lv.service_p50_s, sigma, lv.ttft_s
        return self._interpolate(k, row)

    def jobs_s(self, k: float) -> float:
        """Throughput with k jobs in flight."""
        return self._interpolate(k, lambda lv: (lv.jobs_s,))[0]

    def _interpolate(self, k: float, row) -> tuple:
        """Linear in k between the measured levels, flat outside them."""
        lvs = self.levels
        if k <= lvs[0].jobs:
            return row(lvs[0])
        if k >= lvs[-1].jobs:
            return row(lvs[-1])
        i = bisect.bisect_right(self.modifiers, k)
        lo, hi = lvs[i - 1], lvs[i]
        f = (k - lo.jobs) / (hi.jobs - lo.jobs)
        return tuple(a + (b - a) * f for a, b in zip(row(lo), row(hi), strict=True))

    def to_dict(self) -> dict:
        return {"label": self.label, "example": self.example,
                "cold_start_s": self.cold_start_s, "take_s": self.take_s,
                "modifiers": {str(lv.jobs): {k: v for k, v in asdict(lv).items() if k != "jobs"}
                              for lv in self.levels}}

    @classmethod
    def from_dict(cls, d: dict) -> WorkerFigures:
        levels = tuple(Level(int(m), **{k: float(v) for k, v in lv.items()})
                       for m, lv in d["modifiers"].items())
        return cls(levels, float(d["cold_start_s"]), float(d["take_s"]), d.get("label", ""),
                   bool(d.get("example", False)))

    @classmethod
    def load(cls, path: Path | str) -> WorkerFigures:
        return cls.from_dict(json.loads(Path(path).read_text()))


# Invented for illustration (roughly an 8B model on one GPU, 256 tokens/job): NOT measured.
EXAMPLE = WorkerFigures(
    levels=(Level(1, 0.24, 4.0, 5.0, 0.08), Level(4, 0.83, 4.6, 5.8, 0.12),
            Level(16, 2.35, 6.5, 8.5, 0.30)),
    cold_start_s=60.0, take_s=0.15,
    label="EXAMPLE figures, invented for illustration, not measured on any GPU", example=True)


def figures_from_results(latest: dict) -> WorkerFigures:
    """WorkerFigures from bench/results/latest.json (`make bench`'s figures), or from the
    --json files of bench.concurrency, bench.cold_start and bench.worker_loop, merged.

    Per level k of the concurrency sweep (k closed-loop clients on one endpoint worker):
    jobs_s = jobs / makespan_s, service p50/p95 = p50_s/p95_s of the `endpoint` path (what
    a client sees, a warm worker, no queue), ttft = ttft_p50_s of the `handler` path (the
    handler's first chunk, in process: no take and no /stream delivery). Cold start: the
    handler case's ready_s. Take: the kit loop's median slot-to-take wait (worker_loop).
    The endpoint's service times hold one take already (milliseconds on the local
    endpoint), so the model counts it twice: a small overestimate.
    """
    def get(path: str):
        node = latest
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"bench results lack {path!r}; run `make bench`")
            node = node[part]
        return node

    endpoint, handler = get("concurrency.results.endpoint"), get("concurrency.results.handler")
    levels = []
    for k, r in endpoint.items():
        if k not in handler:
            raise ValueError(f"bench results lack concurrency.results.handler.{k}")
        levels.append(Level(int(k), r["jobs"] / r["makespan_s"], r["p50_s"], r["p95_s"],
                            handler[k]["ttft_p50_s"]))
    model = latest.get("cold_start", {}).get("model")
    cases = [c for c in get("cold_start.cases") if c.get("path") == "handler"]
    if not cases:
        raise ValueError("bench results lack a cold_start case with path 'handler'")
    case = next((c for c in cases if c.get("model") == model), cases[0])
    waits = [s["rows"]["kit loop"]["wait_p50_ms"] for s in get("worker_loop.short")
             if "kit loop" in s.get("rows", {})]
    if not waits:
        raise ValueError("bench results lack worker_loop.short[*].rows['kit loop']")
    machine = (latest.get("_run") or latest["concurrency"]).get("machine", {})
    machine = machine.get("description", "?")
    label = (f"{latest.get('concurrency', {}).get('model', '?')} on {machine} "
             f"(bench results, concurrency ran {latest['concurrency'].get('ran_at', '?')})")
    return WorkerFigures(tuple(levels), case["ready_s"], stats.median(waits) / 1e3, label)


# --- Workload and scaling -------------------------------------------------------------

def poisson_arrivals(rate: float, duration_s: float, seed: int = 0) -> list[float]:
    """Submission times (s) of a Poisson process at `rate` jobs/s over [0, duration_s)."""
    rng, t, out = random.Random(f"arrivals-{seed}"), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(t)


@dataclass(frozen=True)
class Scaling:
    kind: str = "queue-delay"   # "queue-delay" | "request-count" | "fixed"
    value: float = 4.0          # queue delay: seconds; request count: N; fixed: workers
    min_workers: int = 0
    max_workers: int = 3
    idle_timeout_s: float = 5.0
    tick_s: float = 1.0
    request_count_idle_timeout: bool = True  # False: the docs' note read literally

    @classmethod
    def parse(cls, text: str, **kw) -> Scaling:
        """'queue-delay:4' or 'request-count:4' (the value defaults to the docs' 4)."""
        kind, _, value = text.partition(":")
        if kind not in ("queue-delay", "request-count"):
            raise ValueError(f"scale type {kind!r}: expected queue-delay or request-count")
        return cls(kind, float(value or 4), **kw)

    @property
    def name(self) -> str:
        return f"fixed {self.value:g}" if self.kind == "fixed" else f"{self.kind}:{self.value:g}"


def fixed_workers(n: int) -> Scaling:
    """n warm workers for the whole run, no scaling: what the local endpoint can run."""
    return Scaling("fixed", n, min_workers=n, max_workers=n)


# --- The simulation -------------------------------------------------------------------

@dataclass
class Job:
    submit: float
    z: float                    # rank within the service-time spread (standard normal)
    start: float = math.nan
    first_token: float = math.nan
    end: float = math.nan
    worker: int = -1

    @property
    def wait(self) -> float:
        return self.start - self.submit

    @property
    def ttft(self) -> float:
        return self.first_token - self.submit

    @property
    def latency(self) -> float:
        return self.end - self.submit


@dataclass
class _Worker:
    id: int
    launched: float
    ready_at: float
    stopped: float | None = None
    ready: bool = False
    taking: int = 0
    running: dict[int, float] = field(default_factory=dict)  # job -> work left (1 = all)
    last: float = 0.0           # when `running` was last advanced
    version: int = 0            # stale completion events carry an older version
    idle_since: float = 0.0

    @property
    def idle(self) -> bool:
        return self.ready and not self.running and not self.taking


@dataclass
class Result:
    jobs: list[Job]
    workers: list[_Worker]
    timeline: list[tuple[float, int, int]]   # (time, ready, starting) at each change
    modifier: int
    scaling: Scaling
    warmup_s: float
    duration_s: float
    end_s: float        # the last event: the last job's end, or the last worker's stop

    @property
    def horizon_s(self) -> float:
        return max(self.duration_s, self.end_s)

    def counted(self) -> list[Job]:
        return [j for j in self.jobs if self.warmup_s <= j.submit <= self.duration_s]

    def worker_s(self) -> float:
        lo, hi = self.warmup_s, self.horizon_s
        return sum(max(0.0, min(w.stopped if w.stopped is not None else hi, hi)
                       - max(w.launched, lo)) for w in self.workers)

    def summary(self) -> dict:
        jobs = self.counted()
        span = self.horizon_s - self.warmup_s
        return {
            "modifier": self.modifier, "scaling": self.scaling.name, "jobs": len(jobs),
            "p50_wait_s": stats.pct([j.wait for j in jobs], 50),
            "p95_wait_s": stats.pct([j.wait for j in jobs], 95),
            "p50_ttft_s": stats.pct([j.ttft for j in jobs], 50),
            "p95_ttft_s": stats.pct([j.ttft for j in jobs], 95),
            "p95_latency_s": stats.pct([j.latency for j in jobs], 95),
            "mean_workers": self.worker_s() / span if span > 0 else 0.0,
            "peak_workers": max(r + s for _, r, s in self.timeline),
            "worker_s": self.worker_s(),
            "starts": sum(1 for w in self.workers if w.launched > 0),
        }


def simulate(figures: WorkerFigures, modifier: int, scaling: Scaling, *,
             rate: float | None = None, duration_s: float | None = None,
             arrivals: list[float] | None = None, seed: int = 0,
             warmup_s: float = 0.0) -> Result:
    """One run: Poisson arrivals at `rate` over `duration_s`, or the given `arrivals`.
    Figures count jobs submitted from warmup_s to duration_s (default: the last arrival);
    the run goes on until every job has ended and the workers have scaled down."""
    if modifier < 1:
        raise ValueError("the modifier must be at least 1")
    if modifier > figures.modifiers[-1]:
        raise ValueError(f"modifier {modifier} is above the largest measured "
                         f"({figures.modifiers[-1]}): the model does not extrapolate")
    if scaling.max_workers < 1:
        raise ValueError("max workers must be at least 1")
    if arrivals is None:
        if rate is None or duration_s is None:
            raise ValueError("give rate and duration_s, or arrivals")
        arrivals = poisson_arrivals(rate, duration_s, seed)
    arrivals = sorted(arrivals)
    if duration_s is None:
        duration_s = arrivals[-1] if arrivals else 0.0
    zs = random.Random(f"sizes-{seed}")  # a separate stream: same arrivals, same sizes
    jobs = [Job(t, zs.gauss(0.0, 1.0)) for t in arrivals]
    at = {k: figures.at(k) for k in range(1, modifier + 1)}  # looked up at every event

    events: list = []
    seq = 0

    def push(t: float, kind: str, a: int = 0, b: int = 0) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, a, b))
        seq += 1

    workers: list[_Worker] = []
    timeline: list[tuple[float, int, int]] = []
    # The queue is jobs[taken:arrived]: FIFO, in submission order (arrivals are sorted).
    arrived = taken = done = 0

    def record(now: float) -> None:
        live = [w for w in workers if w.stopped is None]
        ready = sum(w.ready for w in live)
        if not timeline or timeline[-1][1:] != (ready, len(live) - ready):
            timeline.append((now, ready, len(live) - ready))

    def launch(now: float, warm: bool = False) -> None:
        w = _Worker(len(workers), now, now if warm else now + figures.cold_start_s)
        workers.append(w)
        if warm:
            w.ready, w.idle_since = True, now
        else:
            push(w.ready_at, "ready", w.id)

    def speed_time(k: int, z: float) -> float:
        """Seconds a whole job would take at a steady k jobs in flight."""
        s50, sigma, _ = at[k]
        return s50 * math.exp(z * sigma)

    def advance(w: _Worker, now: float) -> None:
        k = len(w.running)
        for j in w.running:
            w.running[j] -= (now - w.last) / speed_time(k, jobs[j].z)
        w.last = now

    def reschedule(w: _Worker, now: float) -> None:
        w.version += 1
        k = len(w.running)
        if k:
            left = min(max(left, 0.0) * speed_time(k, jobs[j].z) for j, left in w.running.items())
            push(now + left, "done", w.id, w.version)

    def dispatch(now: float) -> None:
        nonlocal taken
        while taken < arrived:
            free = [w for w in workers if w.ready and w.stopped is None
                    and modifier - len(w.running) - w.taking > 0]
            if not free:
                return
            w = max(free, key=lambda w: (modifier - len(w.running) - w.taking, -w.id))
            w.taking += 1
            jobs[taken].worker = w.id
            push(now + figures.take_s, "start", w.id, taken)
            taken += 1

    def scale(now: float) -> None:
        live = [w for w in workers if w.stopped is None]
        if scaling.kind == "queue-delay":
            # Jobs that have waited over the threshold, less workers already coming.
            late = bisect.bisect_left(arrivals, now - scaling.value, taken, arrived) - taken
            want = len(live) + late - sum(not w.ready for w in live)
            floor = scaling.min_workers
            idle = [w for w in live if w.idle and now - w.idle_since >= scaling.idle_timeout_s]
        else:  # request count: the docs' formula
            in_progress = sum(len(w.running) + w.taking for w in live)
            want = math.ceil(((arrived - taken) + in_progress) / scaling.value)
            floor = want = max(scaling.min_workers, min(scaling.max_workers, want))
            wait = scaling.idle_timeout_s if scaling.request_count_idle_timeout else 0.0
            idle = [w for w in live if w.idle and now - w.idle_since >= wait]
        alive = len(live)
        while alive < min(want, scaling.max_workers):
            launch(now)
            alive += 1
        for w in sorted(idle, key=lambda w: w.idle_since):  # longest idle first
            if alive <= floor:
                break
            w.stopped, alive = now, alive - 1
        record(now)

    for i, t in enumerate(arrivals):
        push(t, "arrive", i)
    for _ in range(scaling.min_workers):
        launch(0.0, warm=True)
    record(0.0)
    if scaling.kind != "fixed":
        push(0.0, "tick")

    now = 0.0
    while events:
        now, _, kind, a, b = heapq.heappop(events)
        if kind == "arrive":
            arrived += 1
        elif kind == "ready":
            w = workers[a]
            w.ready, w.idle_since, w.last = True, now, now
            record(now)
        elif kind == "start":
            w, job = workers[a], jobs[b]
            w.taking -= 1
            advance(w, now)
            w.running[b] = 1.0
            job.start = now
            job.first_token = now + at[len(w.running)][2]
            reschedule(w, now)
        elif kind == "done":
            w = workers[a]
            if b != w.version:
                continue  # the load changed since this was scheduled
            advance(w, now)
            ended = [j for j, left in w.running.items() if left <= 1e-9] or \
                [min(w.running, key=w.running.get)]
            for j in ended:
                del w.running[j]
                jobs[j].end = now
                jobs[j].first_token = min(jobs[j].first_token, now)
                done += 1
            if w.idle:
                w.idle_since = now
            reschedule(w, now)
        elif kind == "tick":
            scale(now)
            # Look on until every job has ended and the workers have scaled down.
            live = sum(w.stopped is None for w in workers)
            if done < len(jobs) or live > scaling.min_workers:
                push(now + scaling.tick_s, "tick")
        dispatch(now)

    return Result(jobs, workers, timeline, modifier, scaling, warmup_s, duration_s, now)


def worker_schedule(result: Result) -> list[tuple[float, int]]:
    """(time_s, workers started and not yet stopped) at each change, so that a real run
    can start and stop workers when the model did (each then takes its real cold start)."""
    last: dict[float, int] = {}  # the count each time settled on
    for t, ready, starting in result.timeline:
        last[t] = ready + starting
    out: list[tuple[float, int]] = []
    for t, n in last.items():
        if not out or out[-1][1] != n:
            out.append((t, n))
    return out


# --- The plan -------------------------------------------------------------------------

def scale_candidates(modifier: int) -> list[str]:
    """The docs' defaults (4), faster settings, and request count at one worker per M jobs."""
    out = ["queue-delay:4", "queue-delay:2", "queue-delay:1",
           "request-count:4", "request-count:2", "request-count:1"]
    if modifier not in (1, 2, 4):
        out.append(f"request-count:{modifier}")
    return out


def plan(figures: WorkerFigures, rate: float, ttft_target_s: float, *,
         duration_s: float = 600.0, warmup_s: float | None = None,
         modifiers: list[int] | None = None, scales: list[str] | None = None,
         max_workers: int = 10, min_workers: int = 0, idle_timeout_s: float = 5.0,
         request_count_idle_timeout: bool = True, seed: int = 0) -> dict:
    """For each modifier, the cheapest (scale setting, smallest max workers) whose p95 TTFT
    meets the target; then the cheapest of those in worker-seconds. Every configuration
    sees the same arrivals and job sizes."""
    if warmup_s is None:
        warmup_s = min(2 * figures.cold_start_s, duration_s / 3)  # leave out the first start
    arrivals = poisson_arrivals(rate, duration_s, seed)
    rows, tried = [], []
    for m in modifiers or figures.modifiers:
        # Below rate / throughput at M, the queue grows without bound: start the search there.
        lo = max(1, min_workers, math.ceil(rate / figures.jobs_s(m) - 1e-9))
        best_met, best_any = None, None
        for text in scales or scale_candidates(m):
            for mw in range(min(lo, max_workers), max_workers + 1):
                sc = Scaling.parse(text, min_workers=min_workers, max_workers=mw,
                                   idle_timeout_s=idle_timeout_s,
                                   request_count_idle_timeout=request_count_idle_timeout)
                s = simulate(figures, m, sc, arrivals=arrivals, duration_s=duration_s,
                             seed=seed, warmup_s=warmup_s).summary()
                p95 = s["p95_ttft_s"] if s["p95_ttft_s"] is not None else math.inf
                s.update(max_workers_setting=mw, meets=p95 <= ttft_target_s, lower_bound=lo)
                tried.append(s)
                if s["meets"]:
                    if best_met is None or s["worker_s"] < best_met["worker_s"]:
                        best_met = s
                    break
                if best_any is None or p95 < (best_any["p95_ttft_s"] or math.inf):
                    best_any = s
                if s["peak_workers"] < mw:
                    break  # the cap was not reached: more would change nothing
        rows.append(best_met or best_any)
    met = [r for r in rows if r["meets"]]
    chosen = min(met, key=lambda r: r["worker_s"]) if met else None
    return {"figures": figures.label, "example": figures.example, "rate": rate,
            "ttft_target_s": ttft_target_s, "duration_s": duration_s, "warmup_s": warmup_s,
            "jobs": len(arrivals), "rows": rows, "tried": tried, "chosen": chosen}


def plan_report(p: dict) -> str:
    head = ["modifier", "scale", "max workers", "p50 TTFT s", "p95 TTFT s", "p95 latency s",
            "mean workers", "peak workers", "worker-s", "meets"]
    rows = [[r["modifier"], r["scaling"], r["max_workers_setting"],
             *(stats.fmt(r[k], 2) for k in ("p50_ttft_s", "p95_ttft_s", "p95_latency_s")),
             r["mean_workers"], r["peak_workers"], f"{r['worker_s']:.0f}",
             "yes" if r["meets"] else "no"] for r in p["rows"]]
    c = p["chosen"]
    verdict = (f"Chosen: CONCURRENCY_MODIFIER={c['modifier']}, {c['scaling']}, max workers "
               f"{c['max_workers_setting']} ({c['worker_s']:.0f} worker-s, mean "
               f"{c['mean_workers']:.1f} workers)" if c else
               "No configuration met the target: raise --max-workers or relax the target.")
    warn = "**EXAMPLE figures, not measured.** " if p["example"] else ""
    return "\n".join([
        f"{warn}Figures: {p['figures']}",
        f"Poisson {p['rate']:g} jobs/s for {p['duration_s']:.0f} s ({p['jobs']} jobs; "
        f"figures from {p['warmup_s']:.0f} s on), target p95 TTFT <= {p['ttft_target_s']:g} s",
        "", stats.table(head, rows), "", verdict])


def simulate_report(s: dict, label: str, example: bool) -> str:
    keys = ["jobs", "p50_wait_s", "p95_wait_s", "p50_ttft_s", "p95_ttft_s", "p95_latency_s",
            "mean_workers", "peak_workers", "worker_s", "starts"]
    warn = "**EXAMPLE figures, not measured.** " if example else ""
    return "\n".join([f"{warn}Figures: {label}",
                      f"modifier {s['modifier']}, {s['scaling']}", "",
                      stats.table(["figure", "value"], [[k, stats.fmt(s[k], 2)] for k in keys])])


# --- Command line ---------------------------------------------------------------------

def _figures(args) -> WorkerFigures:
    if args.example:
        return EXAMPLE
    if args.figures:
        return WorkerFigures.load(args.figures)
    if args.results:  # later files win: e.g. one module's rerun over latest.json
        merged: dict = {}
        for path in args.results:
            merged.update(json.loads(Path(path).read_text()))
        return figures_from_results(merged)
    raise SystemExit("give --figures FILE (or --results latest.json, or --example)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("plan", "simulate", "figures"):
        s = sub.add_parser(name)
        src = s.add_mutually_exclusive_group()
        src.add_argument("--figures", type=Path, help="WorkerFigures JSON")
        src.add_argument("--results", type=Path, nargs="+",
                         help="bench/results/latest.json, or benchmarks' --json files")
        src.add_argument("--example", action="store_true",
                         help="built-in EXAMPLE figures (invented, not measured)")
        if name == "figures":
            continue
        s.add_argument("--rate", type=float, help="Poisson arrivals, jobs/s")
        s.add_argument("--duration", type=float, default=600.0, help="seconds (600)")
        s.add_argument("--warmup", type=float, default=None,
                       help="leave out jobs submitted before this (plan: 2 cold starts)")
        s.add_argument("--scale", default=None,
                       help="queue-delay:SECONDS or request-count:N (plan: try several)")
        s.add_argument("--max-workers", type=int, default=None, help="plan 10, simulate 3")
        s.add_argument("--min-workers", type=int, default=0, help="active workers (0)")
        s.add_argument("--idle-timeout", type=float, default=5.0, help="seconds (5)")
        s.add_argument("--literal-request-count", action="store_true",
                       help="no idle timeout under request count (the docs' note, literally)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--json", type=Path, default=None, help="also write the result here")
    plan_p, sim_p = sub.choices["plan"], sub.choices["simulate"]
    plan_p.add_argument("--ttft-p95", type=float, required=True, help="target, seconds")
    plan_p.add_argument("--modifiers", default=None, help="e.g. 1,4,16 (all measured)")
    sim_p.add_argument("--modifier", type=int, default=1)
    sim_p.add_argument("--fixed-workers", type=int, default=None, help="no scaling")
    sim_p.add_argument("--arrivals", type=Path, default=None,
                       help="JSON list of submission times (s), instead of --rate")
    sim_p.add_argument("--schedule", action="store_true", help="print the worker schedule")
    args = p.parse_args(argv)
    figures = _figures(args)

    if args.cmd == "figures":
        print(json.dumps(figures.to_dict(), indent=2))
        return 0
    if args.cmd == "plan":
        if args.rate is None:
            raise SystemExit("plan needs --rate")
        mods = [int(x) for x in args.modifiers.split(",")] if args.modifiers else None
        out = plan(figures, args.rate, args.ttft_p95, duration_s=args.duration,
                   warmup_s=args.warmup, modifiers=mods,
                   scales=[args.scale] if args.scale else None,
                   max_workers=args.max_workers or 10, min_workers=args.min_workers,
                   idle_timeout_s=args.idle_timeout, seed=args.seed,
                   request_count_idle_timeout=not args.literal_request_count)
        print(plan_report(out))
    else:
        if args.fixed_workers is not None:
            sc = fixed_workers(args.fixed_workers)
        else:
            sc = Scaling.parse(args.scale or "queue-delay:4", min_workers=args.min_workers,
                               max_workers=args.max_workers or 3,
                               idle_timeout_s=args.idle_timeout,
                               request_count_idle_timeout=not args.literal_request_count)
        arrivals = json.loads(args.arrivals.read_text()) if args.arrivals else None
        if arrivals is None and args.rate is None:
            raise SystemExit("simulate needs --rate or --arrivals")
        r = simulate(figures, args.modifier, sc, rate=args.rate,
                     duration_s=None if arrivals else args.duration, arrivals=arrivals,
                     seed=args.seed, warmup_s=args.warmup or 0.0)
        s = r.summary()
        print(simulate_report(s, figures.label, figures.example))
        if args.schedule:
            print("\nworker schedule (time_s, workers):", worker_schedule(r))
        out = {**s, "figures": figures.to_dict(), "schedule": worker_schedule(r),
               "arrivals": [j.submit for j in r.jobs],
               "jobs_detail": [[j.submit, j.start, j.first_token, j.end, j.worker]
                               for j in r.jobs]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
