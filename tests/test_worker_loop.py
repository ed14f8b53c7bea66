"""The kit's worker loop (llmkit/runtime/worker_loop.py, which serve() runs).

Timing runs the SDK's real production loop against the local endpoint, with a paced
toy handler (endpoint_fixtures.FAKE_HANDLER) that stamps its start and end times. The
modifier-1 test also runs with WORKER_LOOP=sdk, the SDK's own loop, which sleeps the
second the kit removes whenever it is full. The start-up tests run the real handler.py with vLLM.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from llmkit import tiny_model
from llmkit.endpoint.harness import EndpointProcess
from llmkit.processes import alive
from llmkit.runtime import errors, timeline, worker_loop

pytest_plugins = ["endpoint_fixtures"]

LOOPS = ["kit", "sdk"]


def _endpoint(tmp_path, handler, modifier: int, loop: str, *extra) -> EndpointProcess:
    # The toy handler loads no model, but the endpoint resolves MODEL for its workers:
    # the tiny one, or it would convert the embedded model first (minutes on 2 cores).
    endpoint = EndpointProcess(workers=1, concurrency=modifier, handler=handler, args=extra,
                               model=tiny_model.build(), log_path=tmp_path / "endpoint.log",
                               endpoint_id="loop", env={"WORKER_LOOP": loop}).start()
    endpoint.wait_workers(timeout=120)
    return endpoint


def _stamps(endpoint: EndpointProcess, job_id: str) -> tuple[float, float]:
    state = endpoint.wait_status(job_id, timeout=60)
    assert state["status"] == "COMPLETED", state
    return state["output"][0]["started"], state["output"][-1]["ended"]


@pytest.mark.parametrize("loop", LOOPS)
def test_at_modifier_1_the_next_job_starts_when_the_last_ends(tmp_path, fake_handler, loop):
    endpoint = _endpoint(tmp_path, fake_handler, 1, loop)
    try:
        job = {"stamp": True, "chunks": 4, "delay": 0.05}  # about 0.2 s each
        first = endpoint.run(job)
        endpoint.wait_status(first, ("IN_PROGRESS",), timeout=30)
        ids = [first] + [endpoint.run(job) for _ in range(4)]  # queued while one runs
        runs = [_stamps(endpoint, i) for i in ids]
    finally:
        endpoint.stop()
    gaps = [nxt[0] - prev[1] for prev, nxt in zip(runs, runs[1:], strict=False)]
    assert all(g > 0 for g in gaps), gaps  # one at a time
    # The gaps are a few ms on a quiet machine; how fast is benchmark 2's to say. The test
    # shows only what tells the loops apart, which one slow scheduler tick cannot undo:
    # the SDK sleeps a second whenever it is full, the kit's loop never does.
    if loop == "kit":
        assert statistics.median(gaps) < 0.2 and max(gaps) < 0.8, gaps
    else:
        assert statistics.median(gaps) > 0.5, gaps


def test_at_modifier_2_two_jobs_submitted_together_run_together(tmp_path, fake_handler):
    # The kit's loop only. The SDK's own loop sometimes counts `a` twice (taken, not yet
    # started) and sits "full" for a second, and sometimes not: a race, so it is shown
    # by benchmark 2 over many jobs, not asserted on one (it failed a clean-clone CI run).
    endpoint = _endpoint(tmp_path, fake_handler, 2, "kit")
    try:
        job = {"stamp": True, "chunks": 10, "delay": 0.1}  # about 1 s each
        a = endpoint.run(job)
        time.sleep(0.1)  # the worker takes `a` alone, then must see its free slot
        b = endpoint.run(job)
        (a0, a1), (b0, b1) = _stamps(endpoint, a), _stamps(endpoint, b)
    finally:
        endpoint.stop()
    assert b0 < a1 and a0 < b1  # they overlap
    assert b0 - a0 < 0.7, (a0, b0)  # b was sent 0.1 s after a: no idle second


def test_concurrent_submits_run_at_once_and_nothing_is_lost_or_repeated(tmp_path,
                                                                        fake_handler):
    endpoint = _endpoint(tmp_path, fake_handler, 4, "kit")
    try:
        ids: list[str] = []
        lock = threading.Lock()

        def submit():
            for _ in range(10):
                job_id = endpoint.run({"stamp": True, "chunks": 2, "delay": 0.02})
                with lock:
                    ids.append(job_id)

        threads = [threading.Thread(target=submit) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs = [_stamps(endpoint, i) for i in ids]
        log = endpoint.log_text()
    finally:
        endpoint.stop()
    assert len(set(ids)) == 40 and len(runs) == 40
    for job_id in ids:  # each taken exactly once
        assert log.count(f"job {job_id} -> ") == 1, job_id
    # never more than 4 at once
    events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 2 <= peak <= 4, peak


def test_worker_loop_trace_logs_each_step_of_a_job_in_order(tmp_path, fake_handler):
    endpoint = EndpointProcess(workers=1, concurrency=2, handler=fake_handler,
                               model=tiny_model.build(), log_path=tmp_path / "endpoint.log",
                               endpoint_id="loop", env={"WORKER_LOOP_TRACE": "1"}).start()
    try:
        endpoint.wait_workers(timeout=120)
        job_id = endpoint.run({"chunks": 3, "delay": 0.02})
        assert endpoint.wait_status(job_id, timeout=60)["status"] == "COMPLETED"
        endpoint.wait_for_log(f"loop-trace [0-9.]+ ended {job_id}", timeout=10)
        log = endpoint.log_text()
    finally:
        endpoint.stop()
    steps = [(t, name) for t, name, detail in timeline.parse(log.splitlines())
             if job_id in detail.split(",")]
    names = [name for _, name in steps]
    assert names[:2] == ["fetched", "started"] and names[-1] == "ended", names
    assert names.count("post") == names.count("posted") == 3, names  # one per chunk
    assert [t for t, _ in steps] == sorted(t for t, _ in steps)


def test_an_empty_queue_is_long_polled_not_hammered(tmp_path, fake_handler):
    endpoint = _endpoint(tmp_path, fake_handler, 2, "kit", "--verbose")
    try:
        before = endpoint.log_text().count("job-take")
        time.sleep(6)  # the endpoint holds an empty take poll open for 5 s
        polls = endpoint.log_text().count("job-take") - before
    finally:
        endpoint.stop()
    assert polls <= 3, polls


def test_sigterm_cuts_the_open_queue_polls_short(tmp_path, fake_handler):
    """An idle worker has a job-take and a job-stop poll open, each held up to 5 s by
    the endpoint (as the platform holds them). The SDK's loop waits for both before it
    exits; the kit's hangs up and exits at once."""
    import psutil

    endpoint = _endpoint(tmp_path, fake_handler, 2, "kit")
    try:
        time.sleep(1)  # both polls are open
        first = endpoint.workers()[0]
        worker = psutil.Process(first["pid"])
        started = time.monotonic()
        worker.terminate()
        worker.wait(30)  # not our child: psutil cannot read its code; the endpoint can
        took = time.monotonic() - started
        assert endpoint.wait_final(endpoint.run({"chunks": 1}), timeout=60)["status"] \
            == "COMPLETED"  # the endpoint's replacement worker: no job was lost
        exited = next(w for w in endpoint.workers() if w["id"] == first["id"])
    finally:
        endpoint.stop()
    assert exited["exitReason"] == "exited with code 0", exited
    assert took < 3, took
    assert "Traceback" not in endpoint.log_text()


# ---- start-up: refusing an unknown SDK, bad settings ------------------------------


def test_the_kit_loop_is_installed_for_the_pinned_sdk(monkeypatch):
    import runpod
    from runpod.serverless.modules import rp_scale

    monkeypatch.delenv("WORKER_LOOP", raising=False)
    monkeypatch.setattr(rp_scale, "JobScaler", rp_scale.JobScaler)  # undone afterwards
    original = rp_scale.JobScaler
    assert worker_loop.install(runpod) == "kit"
    assert issubclass(rp_scale.JobScaler, original) and rp_scale.JobScaler.kit_loop
    assert worker_loop.install(runpod) == "kit"  # twice is harmless
    assert rp_scale.JobScaler.__mro__[1] is original


def test_worker_loop_sdk_leaves_the_sdk_alone(monkeypatch):
    import runpod
    from runpod.serverless.modules import rp_scale

    monkeypatch.setenv("WORKER_LOOP", "sdk")
    original = rp_scale.JobScaler
    assert worker_loop.install(runpod) == "sdk"
    assert rp_scale.JobScaler is original
    monkeypatch.setenv("WORKER_LOOP", "fast")
    with pytest.raises(errors.StartupError,
                       match="WORKER_LOOP='fast' is not valid: expected kit or sdk"):
        worker_loop.install(runpod)


def test_another_sdk_version_is_refused(monkeypatch):
    import runpod

    monkeypatch.setattr(runpod, "__version__", "1.12.0")
    with pytest.raises(errors.UnknownSDK, match=r"written for runpod==1\.10\.0 .*"
                       r"runpod is 1\.12\.0, not 1\.10\.0.*set WORKER_LOOP=sdk"):
        worker_loop.check_sdk(runpod)


def test_changed_sdk_internals_are_refused(monkeypatch):
    import runpod
    from runpod.serverless.modules import rp_scale

    async def handle_job(self, session, job, extra):  # a new parameter
        pass

    monkeypatch.setattr(rp_scale.JobScaler, "handle_job", handle_job)
    monkeypatch.delattr(rp_scale.JobScaler, "set_scale")
    with pytest.raises(errors.UnknownSDK) as err:
        worker_loop.check_sdk(runpod)
    assert "JobScaler.set_scale is missing" in str(err.value)
    assert "JobScaler.handle_job(self, session, job, extra) is not handle_job(self, " \
           "session, job)" in str(err.value)


@pytest.mark.parametrize("preset, level", [(None, "INFO"), ("DEBUG", "DEBUG"),
                                           ("WARN", "WARN")])
def test_the_sdk_logs_at_info_unless_told_otherwise(preset, level):
    import os

    code = ("from llmkit.runtime import worker_loop\nworker_loop.quiet_sdk_logs()\nimport runpod\n"
            "from runpod.serverless.modules.rp_logger import RunPodLogger\n"
            "print(RunPodLogger().level)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RUNPOD_DEBUG_LEVEL", "RUNPOD_LOG_LEVEL")}
    if preset:
        env["RUNPOD_DEBUG_LEVEL"] = preset
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split() == [level], result.stderr[-2000:]


def test_serve_sets_the_log_level_before_it_imports_runpod(handler_path):
    """The SDK reads the level once, at import: serve() must set it first."""
    import ast

    from llmkit.runtime import worker

    tree = ast.parse(Path(worker.__file__).read_text())
    start = next(n for n in tree.body if getattr(n, "name", None) == "_start")
    quiet = [n.lineno for n in ast.walk(start) if isinstance(n, ast.Call)
             and getattr(n.func, "id", "") == "quiet_sdk_logs"]
    runpod = [n.lineno for n in ast.walk(start)  # `import runpod`, import_module("runpod")
              if (isinstance(n, ast.Import) and n.names[0].name == "runpod")
              or (isinstance(n, ast.Constant) and n.value == "runpod")]
    assert quiet and runpod and max(quiet) < min(runpod), (quiet, runpod)
    for module in (tree, ast.parse(handler_path.read_text())):  # nothing imports it earlier
        assert not any(isinstance(n, ast.Import) and n.names[0].name == "runpod"
                       for n in module.body)


def _run_handler(handler_path, env, timeout=300, prelude=""):
    """python -c: ``prelude``, then handler.py run as __main__, as `python handler.py`."""
    code = prelude + f"import runpy\nrunpy.run_path({str(handler_path)!r}, run_name='__main__')\n"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=timeout)
    return result, time.monotonic() - started


@pytest.mark.vllm  # handler.py imports vLLM before the SDK check
def test_an_unknown_sdk_stops_start_up_with_a_clear_message(handler_path, tiny_model_dir,
                                                            tmp_path):
    import os

    env = {**os.environ, "MODEL": str(tiny_model_dir), "MAX_MODEL_LEN": "512",
           "HF_HUB_OFFLINE": "1"}
    prelude = "import runpod\nrunpod.__version__ = '9.9.9'\n"
    result, _ = _run_handler(handler_path, env, prelude=prelude)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "written for runpod==1.10.0" in result.stderr
    assert "runpod is 9.9.9, not 1.10.0" in result.stderr
    assert "Traceback" not in result.stderr  # a message, not a stack dump


# ---- a worker that must die, dies -------------------------------------------------

STUCK_WORKER = textwrap.dedent("""
    import asyncio, sys, threading, time
    from llmkit import tiny_model
    from llmkit.runtime import lifecycle
    import runpod
    from runpod.serverless.modules.rp_fitness import run_fitness_checks

    @runpod.serverless.register_fitness_check
    def disk_has_room():
        raise RuntimeError("only 3 MB free on /tmp")

    def start_worker():
        # Like vLLM's engine: a non-daemon thread that never ends.
        threading.Thread(target=time.sleep, args=(3600,)).start()
        asyncio.run(run_fitness_checks())  # runpod 1.10: sys.exit(1) on a failure

    if sys.argv[1] == "kit":
        lifecycle.serve_or_die(start_worker)
    else:
        start_worker()
""")


@pytest.mark.parametrize("guarded", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_a_failed_fitness_check_ends_the_process_despite_live_threads(tmp_path, guarded):
    import http.server
    import os
    import urllib.parse

    reports = []

    class Ping(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            reports.append((urllib.parse.urlsplit(self.path).query,
                            self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_WORKER)
    env = {**os.environ, "RUNPOD_AI_API_KEY": "k", "RUNPOD_POD_ID": "w-1",
           "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true",
           "RUNPOD_WEBHOOK_PING":
               f"http://127.0.0.1:{server.server_port}/ping/$RUNPOD_POD_ID?gpu=x"}
    proc = subprocess.Popen([sys.executable, str(script), "kit" if guarded else "sdk"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=20)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        hung = True
    finally:
        server.shutdown()
    assert "Fitness check failed: disk_has_room" in out, out
    if not guarded:  # the SDK's own sys.exit(1) waits for the thread
        assert hung
        return
    assert not hung and proc.returncode == 1, out
    query, key = reports[0]
    assert key == "k" and urllib.parse.parse_qs(query) == {
        "gpu": ["x"], "status": ["unhealthy"], "check": ["disk_has_room"],
        "reason": ["fitness check disk_has_room failed: RuntimeError: only 3 MB free on /tmp"],
        "runpod_version": ["1.10.0"]}


FAILING_CHECK = textwrap.dedent("""
    import runpod

    @runpod.serverless.register_fitness_check
    def disk_has_room():
        raise RuntimeError("only 3 MB free on /tmp")
""")


@pytest.mark.engine  # and the local endpoint
def test_a_failed_fitness_check_with_a_live_engine_exits_promptly(tmp_path, tiny_model_dir,
                                                                  handler_path):
    """The SDK's sys.exit(1) would join vLLM's threads; the worker must exit 1 anyway,
    after telling the platform why."""
    wrapper = tmp_path / "worker_with_check.py"
    wrapper.write_text(FAILING_CHECK + "\nimport runpy\n"
                       f"runpy.run_path({str(handler_path)!r}, run_name='__main__')\n")
    endpoint = EndpointProcess(workers=1, handler=wrapper, model=tiny_model_dir,
                               log_path=tmp_path / "endpoint.log", endpoint_id="fit",
                               env={"MAX_MODEL_LEN": "512"}).start()
    try:
        endpoint.wait_for_log(r"Running \d+ fitness check", timeout=400)  # engine is up
        t_check = time.monotonic()
        exited = endpoint.wait_for_log(r"worker-1 exited with code (\d+)", timeout=60)
        took = time.monotonic() - t_check
        log = endpoint.log_text()
        worker = next(w for w in endpoint.workers() if w["id"] == "worker-1")
        pids = [int(p) for p in
                __import__("re").findall(r"worker-1 started \(pid (\d+)", log)]
    finally:
        endpoint.stop()
    assert exited.group(1) == "1"
    assert took < 15, took
    assert "reports itself unhealthy and exits: disk_has_room: fitness check disk_has_room " \
           "failed: RuntimeError: only 3 MB free on /tmp" in log
    assert worker["unhealthyReason"].startswith("disk_has_room: ")
    assert not alive(pids)
