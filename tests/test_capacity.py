"""The capacity model of Runpod Serverless scaling (bench/capacity.py): a simulation, no
vLLM, no endpoint; each test runs in well under a second."""

from __future__ import annotations

import json
import math
import sys

import pytest

from llmkit.paths import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import capacity  # noqa: E402
from bench.capacity import Level, Scaling, WorkerFigures  # noqa: E402

# No spread (p95 = p50), so that times can be checked exactly.
FIG = WorkerFigures((Level(1, 0.5, 2.0, 2.0, 0.1), Level(4, 1.6, 2.5, 2.5, 0.2)),
                    cold_start_s=30.0, take_s=0.05, label="test")
# The same with a spread (p95 = 1.5 x p50).
SPREAD = WorkerFigures((Level(1, 0.45, 2.0, 3.0, 0.1), Level(4, 1.4, 2.5, 3.75, 0.2)),
                       cold_start_s=30.0, take_s=0.05, label="test, spread")


def test_service_time_and_ttft_are_interpolated_in_jobs_in_flight():
    s50, sigma, ttft = FIG.at(2)
    assert s50 == pytest.approx(2.0 + 0.5 / 3) and ttft == pytest.approx(0.1 + 0.1 / 3)
    assert sigma == 0
    assert FIG.at(1) == FIG.at(0.5) == (2.0, 0.0, 0.1)  # flat outside the measured levels
    assert SPREAD.at(1)[1] == pytest.approx(math.log(1.5) / 1.6448536)


def test_jobs_in_one_worker_share_it_as_the_load_changes():
    # A alone from 0.05 (the take) to 1.05: half done. B joins: at 2 in flight a whole job
    # takes 2.1667 s, so A's half ends 1.0833 s later, and B's second half runs alone (1 s).
    r = capacity.simulate(FIG, 4, capacity.fixed_workers(1), arrivals=[0.0, 1.0])
    a, b = r.jobs
    k2 = 2.0 + 0.5 / 3
    assert a.end == pytest.approx(1.05 + k2 / 2)
    assert b.end == pytest.approx(a.end + 1.0)
    assert b.ttft == pytest.approx(0.05 + FIG.at(2)[2])


def test_far_below_one_workers_capacity_ttft_is_take_plus_ttft_and_one_worker_does():
    sc = Scaling("queue-delay", 4, min_workers=1, max_workers=3)
    s = capacity.simulate(FIG, 4, sc, rate=0.01, duration_s=3000, seed=1).summary()
    assert s["jobs"] > 15
    assert s["p50_ttft_s"] == pytest.approx(FIG.take_s + FIG.at(1)[2])
    assert s["p95_ttft_s"] < FIG.take_s + FIG.at(2)[2] + 1e-9
    assert s["peak_workers"] == 1 and s["starts"] == 0


def test_above_one_workers_throughput_with_max_one_the_queue_grows():
    sc = Scaling("queue-delay", 4, min_workers=1, max_workers=1)
    short = capacity.simulate(FIG, 1, sc, rate=0.8, duration_s=150, seed=2).summary()
    long = capacity.simulate(FIG, 1, sc, rate=0.8, duration_s=600, seed=2).summary()
    assert long["peak_workers"] == 1
    assert long["p95_ttft_s"] > 2 * short["p95_ttft_s"] > 20


def test_request_count_one_adds_a_worker_per_job_as_jobs_arrive():
    sc = Scaling("request-count", 1, max_workers=10)
    r = capacity.simulate(FIG, 1, sc, arrivals=[0.0, 0.2, 0.4, 0.6])
    sched = capacity.worker_schedule(r)
    assert sched[:2] == [(0.0, 1), (1.0, 4)]  # the scaler's looks at 0 s and 1 s
    assert sorted({j.worker for j in r.jobs}) == [0, 1, 2, 3]
    # Ready at 30 and 31 s, done 2.05 s later; stopped after the 5 s idle timeout.
    assert sched[2:] == [(38.0, 3), (39.0, 0)]
    # The docs' note read literally: no idle timeout under request count.
    literal = Scaling("request-count", 1, max_workers=10, request_count_idle_timeout=False)
    r = capacity.simulate(FIG, 1, literal, arrivals=[0.0, 0.2, 0.4, 0.6])
    assert capacity.worker_schedule(r)[2:] == [(33.0, 3), (34.0, 0)]


def test_a_cold_start_delays_the_first_jobs_by_about_the_cold_start():
    served = FIG.take_s + FIG.at(1)[2]
    rc = capacity.simulate(FIG, 1, Scaling("request-count", 1), arrivals=[0.0])
    assert rc.jobs[0].ttft == pytest.approx(FIG.cold_start_s + served)
    # Queue delay: the job must wait over 4 s; the scaler sees that at its next look (5 s).
    qd = capacity.simulate(FIG, 1, Scaling("queue-delay", 4), arrivals=[0.0])
    assert qd.jobs[0].ttft == pytest.approx(5.0 + FIG.cold_start_s + served)
    warm = capacity.simulate(FIG, 1, Scaling("queue-delay", 4, min_workers=1), arrivals=[0.0])
    assert warm.jobs[0].ttft == pytest.approx(served)


def test_idle_workers_stop_after_the_idle_timeout_under_queue_delay():
    sc = Scaling("queue-delay", 4, idle_timeout_s=20)
    r = capacity.simulate(FIG, 1, sc, arrivals=[0.0, 50.0])
    # Started at 5 s, ready at 35; job 1 ends at 37.05, job 2 (at 50) finds it warm and
    # ends at 52.05; 20 s idle later, the next look (73 s) stops the worker.
    assert r.jobs[1].ttft == pytest.approx(FIG.take_s + 0.1)
    assert capacity.worker_schedule(r) == [(0.0, 0), (5.0, 1), (73.0, 0)]
    assert r.summary()["worker_s"] == pytest.approx(73.0 - 5.0)  # cold start and idle paid
    short = capacity.simulate(FIG, 1, Scaling("queue-delay", 4, idle_timeout_s=10),
                              arrivals=[0.0, 50.0])
    assert short.jobs[1].ttft > FIG.cold_start_s  # stopped at 48 s: a second cold start


def test_the_simulation_is_deterministic_for_a_seed():
    sc = Scaling("queue-delay", 2, max_workers=5)
    runs = [capacity.simulate(SPREAD, 4, sc, rate=2.0, duration_s=300, seed=s) for s in (7, 7, 8)]
    rows = [[(j.submit, j.start, j.first_token, j.end, j.worker) for j in r.jobs] for r in runs]
    assert rows[0] == rows[1] and runs[0].summary() == runs[1].summary()
    assert rows[0] != rows[2]


def test_two_fixed_workers_beat_one_under_the_same_arrivals():
    arrivals = capacity.poisson_arrivals(0.4, 2000, seed=3)
    one = capacity.simulate(SPREAD, 1, capacity.fixed_workers(1), arrivals=arrivals).summary()
    two = capacity.simulate(SPREAD, 1, capacity.fixed_workers(2), arrivals=arrivals).summary()
    assert two["p95_ttft_s"] < one["p95_ttft_s"] / 2
    assert two["worker_s"] == pytest.approx(2 * one["worker_s"], rel=0.05)
    assert one["starts"] == two["starts"] == 0


def test_mg1_mean_wait_matches_pollaczek_khinchine():
    # One worker, one job at a time, lognormal service, no take: an M/G/1 queue, whose mean
    # wait is lambda E[S^2] / (2 (1 - rho)).
    fig = WorkerFigures((Level(1, 1.0, 1.0, 2.0, 0.0),), cold_start_s=0, take_s=0)
    sigma = math.log(2) / 1.6448536
    es, es2 = math.exp(sigma ** 2 / 2), math.exp(2 * sigma ** 2)
    rate = 0.5 / es
    r = capacity.simulate(fig, 1, capacity.fixed_workers(1), rate=rate, duration_s=30000 / rate,
                          seed=4)
    mean_service = sum(j.end - j.start for j in r.jobs) / len(r.jobs)
    mean_wait = sum(j.wait for j in r.jobs) / len(r.jobs)
    assert len(r.jobs) > 28000
    assert mean_service == pytest.approx(es, rel=0.02)
    assert mean_wait == pytest.approx(rate * es2 / (2 * (1 - 0.5)), rel=0.08)


def test_plan_picks_the_cheapest_configuration_that_meets_the_target():
    p = capacity.plan(SPREAD, 1.0, 2.0, duration_s=400, max_workers=6, seed=5)
    chosen = p["chosen"]
    assert chosen and chosen["meets"] and chosen["p95_ttft_s"] <= 2.0
    met = [t for t in p["tried"] if t["meets"]]
    assert chosen["worker_s"] == min(t["worker_s"] for t in met)
    assert {r["modifier"] for r in p["rows"]} == {1, 4}
    # The plan's choice, run again on its own, gives the same figures.
    sc = Scaling.parse(chosen["scaling"], max_workers=chosen["max_workers_setting"])
    again = capacity.simulate(SPREAD, chosen["modifier"], sc, rate=1.0, duration_s=400, seed=5,
                              warmup_s=p["warmup_s"]).summary()
    assert again["p95_ttft_s"] == chosen["p95_ttft_s"]
    assert "Chosen: CONCURRENCY_MODIFIER=" in capacity.plan_report(p)


def test_plan_says_so_when_nothing_meets_the_target():
    p = capacity.plan(FIG, 0.5, 0.1, duration_s=200, max_workers=2)  # below take + TTFT
    assert p["chosen"] is None and not any(r["meets"] for r in p["rows"])
    assert "No configuration met the target" in capacity.plan_report(p)


def test_figures_round_trip_through_json_and_the_example_is_labelled():
    assert WorkerFigures.from_dict(json.loads(json.dumps(FIG.to_dict()))) == FIG
    assert capacity.EXAMPLE.example and "not measured" in capacity.EXAMPLE.label
    assert not FIG.example
    with pytest.raises(ValueError, match="does not extrapolate"):
        capacity.simulate(FIG, 8, capacity.fixed_workers(1), arrivals=[0.0])


def test_figures_from_the_benchmarks_results():
    latest = json.loads((REPO_ROOT / "bench" / "results" / "latest.json").read_text())
    fig = capacity.figures_from_results(latest)
    endpoint = latest["concurrency"]["results"]["endpoint"]
    assert fig.modifiers == sorted(int(k) for k in endpoint)
    one = endpoint["1"]
    assert fig.level(1).jobs_s == pytest.approx(one["jobs"] / one["makespan_s"])
    assert fig.level(1).service_p95_s == one["p95_s"]
    assert fig.level(1).ttft_s == latest["concurrency"]["results"]["handler"]["1"]["ttft_p50_s"]
    assert 0 < fig.take_s < fig.cold_start_s
    del latest["concurrency"]["results"]["endpoint"]
    with pytest.raises(ValueError, match="concurrency.results.endpoint"):
        capacity.figures_from_results(latest)


def test_command_line(tmp_path, capsys):
    assert capacity.main(["plan", "--example", "--rate", "1", "--ttft-p95", "2",
                          "--duration", "300", "--modifiers", "4,16"]) == 0
    out = capsys.readouterr().out
    assert "EXAMPLE figures, not measured" in out and "| modifier" in out
    figs, arr, res = tmp_path / "f.json", tmp_path / "a.json", tmp_path / "r.json"
    figs.write_text(json.dumps(FIG.to_dict()))
    arr.write_text(json.dumps([0.0, 0.5, 1.0, 1.5]))
    assert capacity.main(["simulate", "--figures", str(figs), "--arrivals", str(arr),
                          "--modifier", "1", "--fixed-workers", "2", "--json", str(res)]) == 0
    out = capsys.readouterr().out
    assert "fixed 2" in out and "EXAMPLE" not in out
    saved = json.loads(res.read_text())
    assert saved["arrivals"] == [0.0, 0.5, 1.0, 1.5] and saved["schedule"] == [[0.0, 2]]
    assert saved["jobs"] == 4  # a replayed pattern counts every job, the last one too
