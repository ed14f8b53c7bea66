"""The benchmarks (bench/) run end to end with a tiny configuration and print figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmkit.paths import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import ttft_chunks  # noqa: E402

HEADINGS = ["## 1. Handler overhead", "## 2. Worker loop overhead", "## 3. Concurrency scaling",
            "## 4. Time to first token", "## 5. Cold start", "## 6. CPU settings",
            "## 7. The OpenAI route", "## 8. First text under load"]


@pytest.mark.engine
@pytest.mark.timeout(1500)  # 4-7 min, longer beside the other test worker's image builds
def test_every_benchmark_runs_quick_and_prints_its_figures(tmp_path, tiny_model_dir):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1440)
    log = proc.stdout[-4000:] + "\n--- stderr ---\n" + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "failed unexpectedly" not in proc.stdout + proc.stderr, log  # a job a figure hid
    for heading in HEADINGS:
        assert heading in proc.stdout, f"{heading!r} missing:\n{log}"
    assert "ratio handler/raw tok/s, stream mode, side by side = " in proc.stdout, log
    assert "ratio endpoint/raw tok/s at 2 = " in proc.stdout, log
    results = json.loads(out.read_text())
    assert not results["_run"]["failed"]
    ho = results["handler_overhead"]["together"]
    assert ho["raw stream"]["tok_s"] > 0 and ho["handler stream"]["tok_s"] > 0
    conc = results["concurrency"]["results"]
    assert set(conc) == {"raw vLLM", "handler", "endpoint"}
    assert all(conc[p]["2"]["tok_s"] > 0 for p in conc)
    wl = results["worker_loop"]
    assert wl["rows"]["endpoint, modifier 2, kit loop"]["chunks"] >= 1
    assert wl["rows"]["endpoint, modifier 2, SDK loop"]["chunks"] >= 1
    assert set(wl["short"][0]["rows"]) == {"kit loop", "SDK loop"}
    assert all(x["jobs_s"] > 0 and x["wait_p50_ms"] >= 0 for x in wl["short"][0]["rows"].values())
    assert set(wl["logs"]["rows"]) == {"INFO (the worker's default)",
                                       "DEBUG (RUNPOD_DEBUG_LEVEL=DEBUG)"}
    assert results["ttft_chunks"]["chunks"]["endpoint (local posts)"]["chunks"] >= 1
    cold = results["cold_start"]["cases"][0]
    assert cold["path"] == "handler" and 0 < cold["ready_s"] < cold["first_token_s"]
    assert results["cpu_settings"]["rows"][0]["b16_tok_s"] > 0
    route = results["openai_route"]["rows"]["2 client(s): OpenAI route (SSE stream)"]
    assert route["tok_s"] > 0 and route["chunks"] >= 1
    first = results["first_text"]  # the kit's worker beside the `vllm serve` proxy worker
    for worker in ("kit worker", "vllm serve proxy"):
        row = first["rows"][f"4|{worker}"]
        assert row["jobs"] == 4 and 0 < row["first_p50_ms"] <= row["first_p95_ms"], row
        steps = first["timeline"][worker]["steps_ms"]  # each step traced, in order
        order = [steps[s] for s in ("fetched", "started", "engine-in", "first-text", "client")]
        assert None not in order and order == sorted(order), steps


def test_chunking_policies_on_a_token_timeline():
    times = [i * 0.01 for i in range(100)]  # 100 tokens, 10 ms apart
    official = ttft_chunks.policy_official(times)
    assert [n for _, n in official] == [1, 3, 9, 27, 50, 10]
    # Posts faster than tokens: one chunk per token; slower: tokens merge.
    assert len(ttft_chunks.policy_delta(times, 0.002)) == 100
    merged = ttft_chunks.policy_delta(times, 0.035)
    assert merged[0] == (0.0, 1) and sum(n for _, n in merged) == 100
    assert all(n <= 4 for _, n in merged) and len(merged) <= 30
    bounded = ttft_chunks.policy_delta(times, 0.002, min_interval_s=0.1)
    assert len(bounded) <= 11 and bounded[0] == (0.0, 1)
    # The handler's policy: gaps of 0.1, 0.2, 0.4, 0.4 s after the first token.
    growing = ttft_chunks.policy_delta(times, 0.002, min_interval_s=0.1, max_interval_s=0.4)
    assert [round(t, 2) for t, _ in growing] == [0.0, 0.1, 0.3, 0.7, 0.99]
    assert sum(n for _, n in growing) == 100
    s = ttft_chunks.summarise(times, official, 0.0)
    assert s["posts"] == 6 and s["first_token_ms"] == 0
    assert s["max_delay_ms"] == pytest.approx(490, abs=1)


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_the_reload_benchmark_runs_quick_and_prints_its_ratio(tmp_path, tiny_model_dir):
    out = tmp_path / "reload.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reload", "--quick", "--rounds", "2", "--restarts", "1",
         "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "restart / reload: " in proc.stdout, proc.stdout
    result = json.loads(out.read_text())["reload"]
    assert len(result["reload_s"]) == 2 and len(result["restart_s"]) == 1
    assert 0 < result["reload_median_s"] < result["restart_median_s"]


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_the_load_balancing_benchmark_runs_quick_and_prints_its_ratios(tmp_path, tiny_model_dir):
    out = tmp_path / "lb.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load_balancing", "--quick", "--reps", "1",
         "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "load-balancing / queue tok/s, native API, 2 client(s)" in proc.stdout, proc.stdout
    result = json.loads(out.read_text())["load_balancing"]
    assert all(row["tok_s"] > 0 and row["jobs"] for row in result["rows"].values())
    statuses = [status for _, status in result["pings"]]
    assert statuses[-1] == 200 and 204 in statuses, result["pings"]
