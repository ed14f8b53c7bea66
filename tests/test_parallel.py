"""vLLM's parallelism through the kit, on vLLM's CPU build with the tiny model, which splits
(2 attention heads, 2 layers): tensor parallel 2 in a queue worker (a job, an OpenAI
request, a handler reload, a rank killed mid-job), pipeline parallel 2 in a load-balancing
worker stopped by SIGTERM, data parallel 2 and a restart in the notebook's engine, and the
image: two containers serving one model across nodes.

Each rank is a process of its own (VLLM::Worker_TP0, ...), with its own share of the cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import image_fixtures
import psutil
import pytest
import requests
from openai import OpenAI
from test_reliability import wait_exited
from test_reload_worker import install, source, versions_of, wait_serving

from llmkit.endpoint.harness import EndpointProcess
from llmkit.job_inputs import exact_tokens
from llmkit.paths import REPO_ROOT

pytest_plugins = ["image_fixtures"]
pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

JOB = {"prompt": "The quick brown", "sampling_params": {"max_tokens": 8, "temperature": 0}}


def ranks(pid: int) -> dict[int, str]:
    """The engine's rank processes under ``pid``: {pid: "Worker_TP1", ...}."""
    found = {}
    for process in psutil.Process(pid).children(recursive=True):
        try:
            name = process.name()
        except psutil.NoSuchProcess:
            continue
        if re.fullmatch(r"VLLM::Worker(_\w+)?", name):
            found[process.pid] = name.removeprefix("VLLM::")
    return found


def family(pid: int) -> list[int]:
    process = psutil.Process(pid)
    return [pid, *(p.pid for p in process.children(recursive=True))]


def engine_processes(pid: int) -> list[int]:
    """vLLM's processes under ``pid`` (it names them VLLM::...), zombies left out."""
    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            if process.name().startswith("VLLM::") \
                    and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def shared_memory(pids) -> set[str]:
    """The /dev/shm segments these processes have mapped: vLLM's message queues between its
    processes, and its CPU build's shared-memory all-reduce between ranks."""
    segments = set()
    for pid in pids:
        try:
            segments |= {m.path for m in psutil.Process(pid).memory_maps()
                         if m.path.startswith("/dev/shm/")}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return segments


def wait_gone(pids, timeout=30) -> list[int]:
    """The pids still running after ``timeout`` (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def openai_client(endpoint: EndpointProcess) -> OpenAI:
    return OpenAI(base_url=f"{endpoint.base}/{endpoint.endpoint_id}/openai/v1",
                  api_key=endpoint.api_key, max_retries=0, timeout=120)


def chat(client: OpenAI) -> str:
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8,
        temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length"), reply
    return reply.choices[0].message.content


# ---- tensor parallel 2 in a queue worker ------------------------------------------------


@pytest.fixture(scope="module")
def tp2(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp2")
    handler = folder / "handler.py"
    handler.write_text(source("v0"))
    with EndpointProcess(workers=1, concurrency=4, model=tiny_model_dir, handler=handler,
                         args=["--reload", "--restarts", "0"], endpoint_id="tp2",
                         env={"TENSOR_PARALLEL_SIZE": "2", "MAX_MODEL_LEN": "2048"},
                         log_path=folder / "endpoint.log") as endpoint:
        endpoint.wait_workers(timeout=600)
        endpoint.handler_file = handler
        yield endpoint


def ready_worker(endpoint) -> dict:
    (worker,) = [w for w in endpoint.workers() if w["state"] == "ready"]
    return worker


def test_tensor_parallel_2_serves_a_job_and_an_openai_request(tp2):
    engine = ranks(ready_worker(tp2)["pid"])
    assert sorted(engine.values()) == ["Worker_TP0", "Worker_TP1"]
    if len(os.sched_getaffinity(0)) >= 2:  # each rank's threads run on cores of its own
        shares = [set(psutil.Process(pid).cpu_affinity()) for pid in engine]
        assert all(shares) and not shares[0] & shares[1], shares
    state = tp2.runsync(JOB, wait_ms=120000)
    assert state["status"] == "COMPLETED", state
    assert "".join(chunk["text"] for chunk in state["output"])
    assert chat(openai_client(tp2))


def test_a_handler_reload_keeps_the_parallel_engine(tp2):
    pid = ready_worker(tp2)["pid"]
    before = ranks(pid)
    install(tp2, source("v1"))
    wait_serving(tp2, source("v1"))
    assert versions_of(tp2, JOB)[1] == {"v1"}
    assert ranks(pid) == before, "the engine's ranks restarted"


def test_a_rank_killed_mid_job_fails_the_job_and_the_worker_leaves_nothing(tp2):
    worker = ready_worker(tp2)
    engine = ranks(worker["pid"])
    processes, segments = family(worker["pid"]), shared_memory(family(worker["pid"]))
    job_id = tp2.run(exact_tokens(1800, "a long answer"))
    tp2.wait_status(job_id, ("IN_PROGRESS",))
    time.sleep(0.5)  # decoding
    victim = next(pid for pid, name in engine.items() if name == "Worker_TP1")
    os.kill(victim, signal.SIGKILL)
    state = tp2.wait_final(job_id, timeout=60)
    assert state["status"] == "FAILED", state
    exited = wait_exited(tp2, worker["id"])
    assert exited["exitReason"] == "exited with code 1", exited
    assert wait_gone(processes) == [], "processes of the dead worker still run"
    assert {s for s in segments if os.path.exists(s)} == set()
    assert re.search(r"vLLM engine died \(.*Worker_TP1.*\): exiting", tp2.log_text()), \
        tp2.log_text()[-3000:]



# ---- the notebook's engine: tensor parallel 2, then restart_engine() at data parallel 2 ----


def test_the_notebooks_engine_restarts_from_tensor_to_data_parallel_and_leaves_nothing(
        tiny_model_dir, plain_handler):
    """As a notebook's cells run: setup() and engine() at tensor parallel 2, a job; setup()
    at data parallel 2 and restart_engine(), a job; shutdown_engine(). Each engine's ranks
    and shared memory are gone once the next starts, and all of it at the end."""
    script = Path(__file__).with_name("parallel_notebook.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT / "scripts"), str(Path(__file__).parent)])}
    done = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(plain_handler)],
                          env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    tensor, data, end = json.loads(done.stdout.strip().splitlines()[-1])
    assert tensor["ranks"] == ["Worker_TP0", "Worker_TP1"], tensor
    assert data["ranks"] == ["Worker", "Worker"] and data["cores"] == 2, data  # one per engine
    assert tensor["text"] and data["text"] == tensor["text"]  # greedy: the same model's text
    assert not set(tensor["pids"]) & set(data["pids"]) and end["pids"] == [], end
    assert tensor["segments"] and not set(tensor["segments"]) & set(data["existing"]), data
    assert end["existing"] == [], end


# ---- pipeline parallel 2 in a load-balancing worker ----------------------------------------


def test_pipeline_parallel_2_serves_a_load_balancing_worker_and_stops_clean(
        tmp_path_factory, tiny_model_dir, plain_handler):
    """MODE_TO_RUN=lb at PIPELINE_PARALLEL_SIZE=2: a native request and an OpenAI request,
    then SIGTERM, as the platform stops a worker: every rank ends, the memory is freed."""
    from test_lb_worker import _host, _remove, native

    worker = _host(tmp_path_factory, tiny_model_dir, plain_handler,
                   {"PIPELINE_PARALLEL_SIZE": "2"})
    try:
        pid = worker.process.pid
        assert sorted(ranks(pid).values()) == ["Worker_PP0", "Worker_PP1"]
        reply = native(worker, JOB)
        assert reply.status_code == 200 and reply.json()["output"][0]["text"], reply.text
        client = OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0,
                        timeout=120)
        assert chat(client)
        processes, segments = family(pid), shared_memory(family(pid))
        worker.terminate()
        assert worker.process.wait(60) == 0, worker.logs()[-3000:]
        assert wait_gone(processes) == []
        assert {s for s in segments if os.path.exists(s)} == set()
        assert "compiled, not eager" in worker.logs()
    finally:
        _remove(worker)


# ---- two nodes of an Instant Cluster: two containers, one model ---------------------------


def needs_image(test):
    for mark in image_fixtures.NEEDS_IMAGE:
        test = mark(test)
    return test


@needs_image
def test_two_containers_serve_one_model_across_nodes(tmp_path_factory, base_image,
                                                     tiny_model_dir, plain_handler):
    """As on a Runpod Instant Cluster of two pods, with CLUSTER=vllm (vLLM's CPU build has no
    Ray executor): two containers on a Docker network of the test's own making, each with
    one core and the variables Runpod sets. Node 0 serves a load-balancing worker whose
    engine is pipeline parallel across both; node 1 runs its half of the model."""
    import image_harness as h
    from test_lb_worker import native

    network = f"llmkit-test-cluster-{os.getpid()}"
    h.docker("network", "create", network)
    mounts, model = image_fixtures.mount_model(tiny_model_dir)
    port = h.free_port()
    head_name = f"{network}-node0"
    cluster = {**model, "CLUSTER": "vllm", "NUM_NODES": "2", "PRIMARY_ADDR": head_name,
               "PRIMARY_PORT": "29501", "MAX_MODEL_LEN": "2048"}
    boxes = []
    try:
        boxes.append(h.Container(
            base_image, "--network", network, "--cpuset-cpus", "0", "-p", f"127.0.0.1:{port}:80",
            image_fixtures.SHM, *mounts, "-v", f"{plain_handler}:/app/handler.py:ro",
            name=head_name, env={**cluster, "NODE_RANK": "0", "MODE_TO_RUN": "lb"}))
        cores = "1" if len(os.sched_getaffinity(0)) > 1 else "0"
        boxes.append(h.Container(
            base_image, "--network", network, "--cpuset-cpus", cores, image_fixtures.SHM,
            *mounts, name=f"{network}-node1", env={**cluster, "NODE_RANK": "1"}))
        head, other = boxes
        other.wait_for_log(r"node 1 of 2: serving its share", timeout=300)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:  # /ping says 200 once the engine across both nodes is up
            try:
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert head.running() and other.running(), head.logs()[-3000:] + other.logs()[-3000:]
            assert time.monotonic() < deadline, head.logs()[-3000:]
            time.sleep(1)
        worker = type("Worker", (), {"url": url})
        reply = native(worker, JOB)
        assert reply.status_code == 200 and reply.json()["output"][0]["text"], reply.text
        assert chat(OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120))
        logs = head.logs()
        assert "node 0 of 2" in logs and "Worker_PP0" in logs, logs[-3000:]
        assert "Worker_PP1" in other.logs(), other.logs()[-3000:]
    finally:
        for box in boxes:
            box.remove()
        h.docker("network", "rm", network, check=False)
