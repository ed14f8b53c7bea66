"""Handler reload in a real worker (vLLM CPU engine, tiny model) behind the local endpoint,
started as `make serve` starts it (--reload): a new handler.py is served on the running
engine, a bad one leaves the old one serving, and 20 reloads under load lose no job.

One endpoint for the module; its worker's handler file is the test's own copy."""

from __future__ import annotations

import re
import threading
import time

import psutil
import pytest

from llmkit.endpoint.harness import EndpointProcess
from llmkit.runtime.reload import digest

pytestmark = pytest.mark.engine

HANDLER = '''
from llmkit.runtime import generate, read_input, serve
{prelude}
VERSION = "{version}"


async def handler(job):
    request = read_input(job)
    async for text in generate(request):
        yield {{"text": text, "version": VERSION}}


if __name__ == "__main__":
    serve(handler)
'''
JOB = {"prompt": "Once upon a time", "sampling_params": {"max_tokens": 12, "temperature": 0}}


def source(version: str, prelude: str = "") -> str:
    return HANDLER.format(version=version, prelude=prelude)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("reload")
    handler = folder / "handler.py"
    handler.write_text(source("v0"))
    with EndpointProcess(workers=1, concurrency=8, model=tiny_model_dir, handler=handler,
                         args=["--reload"], endpoint_id="reload",
                         log_path=folder / "endpoint.log") as ep:
        ep.wait_workers(timeout=600)
        ep.handler_file = handler
        ep.worker_pid = ep.workers()[0]["pid"]
        ep.engine_pids = engine_cores(ep.worker_pid)
        assert len(ep.engine_pids) == 1, ep.engine_pids
        yield ep


def engine_cores(pid: int) -> list[int]:
    return sorted(p.pid for p in psutil.Process(pid).children(recursive=True)
                  if "EngineCore" in p.name() + " ".join(p.cmdline()))


def serving(ep) -> dict:
    (worker,) = [w for w in ep.workers() if w["state"] == "ready"]
    return worker["handler"] or {}


def wait_serving(ep, text: str, timeout: float = 20) -> dict:
    """Until the worker reports it serves ``text``; returns its report."""
    sha, deadline = digest(text.encode()), time.monotonic() + timeout
    while (report := serving(ep)).get("sha256") != sha or report["lastReloadFailed"]:
        assert time.monotonic() < deadline, f"not serving {sha} after {timeout} s: {report}"
        time.sleep(0.1)
    return report


def wait_failed(ep, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while not (report := serving(ep)).get("lastReloadFailed"):
        assert time.monotonic() < deadline, f"no failed reload after {timeout} s: {report}"
        time.sleep(0.1)
    return report


def versions_of(ep, job_input=JOB) -> tuple[str, set]:
    state = ep.runsync(job_input, wait_ms=120000)
    assert state["status"] == "COMPLETED", state
    return state["id"], {chunk["version"] for chunk in state["output"]}


def same_process_and_engine(ep):
    (worker,) = [w for w in ep.workers() if w["state"] == "ready"]
    assert worker["pid"] == ep.worker_pid, "the worker restarted"
    assert engine_cores(ep.worker_pid) == ep.engine_pids, "vLLM's engine restarted"


def install(ep, text: str) -> None:
    """As `make export-handler` writes it: a new file renamed over the old one."""
    temporary = ep.handler_file.with_name(".handler.py.tmp")
    temporary.write_text(text)
    temporary.replace(ep.handler_file)


def test_a_new_handler_is_served_on_the_running_engine(endpoint):
    install(endpoint, source("v0"))  # the module may have left another version
    wait_serving(endpoint, source("v0"))
    assert versions_of(endpoint)[1] == {"v0"}
    health = endpoint.health()["handlers"]
    assert health == [{"worker": "worker-1", "sha256": digest(source("v0").encode()),
                       "lastReloadFailed": False}]
    started = time.monotonic()
    install(endpoint, source("v1"))
    report = wait_serving(endpoint, source("v1"))
    assert versions_of(endpoint)[1] == {"v1"}
    print(f"export to first job on the new handler: {time.monotonic() - started:.2f} s")
    assert report["file"] == str(endpoint.handler_file)
    same_process_and_engine(endpoint)


BAD = {
    "syntax error": (source("bad").replace("VERSION}", "VERSION)"), r"line 10: SyntaxError"),
    "import error": (source("bad", "import no_such_module_here\n"),
                     r"line 3: ModuleNotFoundError: No module named 'no_such_module_here'"),
    "missing handler": (source("bad").replace("def handler(", "def handle("),
                        r"defines no handler"),
    "half-written": (None, r"no call to serve\(\).*half-written"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_reload_leaves_the_old_handler_serving_and_says_why(endpoint, case):
    good, fixed = source(f"good-before-{case}"), source(f"fixed-after-{case}")
    install(endpoint, good)
    wait_serving(endpoint, good)
    text, expected = BAD[case]
    editor = None
    if case == "half-written":  # the next file, caught while an editor writes it in place
        text = fixed[:fixed.index("if __name__")]
        editor = open(endpoint.handler_file, "w")  # closed below
        editor.write(text)
        editor.flush()
    else:
        install(endpoint, text)
    try:
        report = wait_failed(endpoint)
        assert report["sha256"] == digest(good.encode()), "still the old handler"
        assert str(endpoint.handler_file) in report["reloadError"]
        assert re.search(expected, report["reloadError"]), report["reloadError"]
        assert versions_of(endpoint)[1] == {f"good-before-{case}"}
        logged = rf"handler reload: FAILED, still serving sha256 {digest(good.encode())}: " \
                 rf"{re.escape(str(endpoint.handler_file))}.*{expected}"
        endpoint.wait_for_log(logged, timeout=10)
        same_process_and_engine(endpoint)
    finally:
        if editor is not None:  # the editor finishes: the file is whole
            editor.write(fixed[len(text):])
            editor.close()
    if editor is None:
        install(endpoint, fixed)
    wait_serving(endpoint, fixed)  # the next good file is served again
    assert versions_of(endpoint)[1] == {f"fixed-after-{case}"}


def test_twenty_reloads_under_load_lose_no_job_and_mix_no_handlers(endpoint):
    """8 jobs at a time, all the while 20 reloads, half of them written in place in two
    halves (a half-loaded handler must never answer): every job completes once, on one
    complete version, and every version answers jobs (each is replaced only after one has)."""
    install(endpoint, source("load-start"))
    wait_serving(endpoint, source("load-start"))
    before = endpoint.health()["jobs"]
    reloads_before = serving(endpoint)["reloads"]
    complete = {"load-start"}
    results, errors, done = [], [], threading.Event()

    def client():
        while not done.is_set():
            try:
                state = endpoint.runsync(JOB, wait_ms=120000)
                results.append(state)
            except Exception as error:  # reported below, not lost in a thread
                errors.append(repr(error))

    def wait_answered(version, timeout=120):
        """Until a job has come back from ``version``: a fixed pause would leave a version
        unused on a machine slow enough (a clean-clone CI saw 12 in a row answer nothing)."""
        deadline = time.monotonic() + timeout
        while not any(chunk.get("version") == version for state in list(results)
                      for chunk in state.get("output") or []):
            assert time.monotonic() < deadline and not errors, \
                f"no job came back from {version} in {timeout} s: {errors[:3]}"
            time.sleep(0.05)

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    try:
        current = "load-start"
        for i in range(20):
            wait_answered(current)  # jobs ran on each version before the next replaces it
            text = source(f"load-{i}")
            if i % 2:
                with open(endpoint.handler_file, "w") as f:  # in place, in two halves
                    f.write(text[:len(text) // 2])
                    f.flush()
                    time.sleep(0.4)  # longer than the watcher's settle time: it sees the half
                    f.write(text[len(text) // 2:])
            else:
                install(endpoint, text)
            complete.add(f"load-{i}")
            wait_serving(endpoint, text)
            current = f"load-{i}"
        wait_answered(current)
    finally:
        done.set()
        for thread in clients:
            thread.join(timeout=180)
    assert not errors, errors[:3]
    assert all(state["status"] == "COMPLETED" for state in results), \
        [s for s in results if s["status"] != "COMPLETED"][:3]
    ids = [state["id"] for state in results]
    assert len(ids) == len(set(ids)), "a job came back twice"
    seen = [{chunk["version"] for chunk in state["output"]} for state in results]
    assert all(len(versions) == 1 for versions in seen), "a job mixed two handlers"
    answered = set().union(*seen)
    assert answered <= complete, f"answered by a version never written whole: " \
                                 f"{answered - complete}"
    assert answered == complete, f"versions that answered no job: {complete - answered}"
    after = endpoint.health()["jobs"]
    assert after["completed"] - before["completed"] == len(results)
    assert after["failed"] == before["failed"] and after["inQueue"] == 0
    assert serving(endpoint)["reloads"] - reloads_before == 20
    same_process_and_engine(endpoint)
    print(f"{len(results)} jobs, 8 at a time, over 20 reloads; {len(answered)} versions "
          f"answered")


def test_a_reload_that_changes_engine_settings_says_they_need_a_restart(endpoint):
    """Last in the module: the new file changes the worker's environment for good."""
    text = source("settings", 'import os\nos.environ["MAX_MODEL_LEN"] = "64"\n')
    install(endpoint, text)
    report = wait_serving(endpoint, text)
    assert report["restartNeeded"] == ["MAX_MODEL_LEN"]
    endpoint.wait_for_log(r"engine settings differ from the running engine's \(MAX_MODEL_LEN\)"
                          r": they apply only when the worker restarts")
    assert versions_of(endpoint)[1] == {"settings"}
    same_process_and_engine(endpoint)
