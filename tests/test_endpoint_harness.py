"""The harness that runs the local endpoint for the demo, the soak, the benchmarks and
the tests: readiness from the ready file, and nothing left running after a failed start.
No engine: the workers here are small scripts."""

from __future__ import annotations

import json
import time

import pytest

from llmkit.endpoint.harness import RUN_TAG, EndpointError, EndpointProcess
from llmkit.processes import alive, tagged

# A worker that never polls for jobs, and leaves a process behind that is in no
# process group of the endpoint's and no longer anyone's child (re-parented to init).
NEVER_READY = '''
import os, subprocess, time
pids = os.environ["PIDS_FILE"]
subprocess.run(["sh", "-c", f"setsid sleep 600 >/dev/null 2>&1 & echo $! >> {pids}"], check=True)
with open(pids, "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(600)
'''


def test_ready_file_gives_the_url_and_pid_but_no_key(tmp_path):
    endpoint = EndpointProcess(workers=0, endpoint_id="ready", log_path=tmp_path / "log")
    with endpoint:
        ready = json.loads(endpoint.ready_path.read_text())
        assert set(ready) == {"url", "root", "endpoint_id", "pid", "port"}
        assert ready["pid"] == endpoint.pid and ready["endpoint_id"] == "ready"
        assert ready["url"] == f"http://127.0.0.1:{ready['port']}/v2" == endpoint.base
        assert endpoint.api_key not in endpoint.ready_path.read_text()
        assert endpoint.health()["jobs"]["inQueue"] == 0
        job_id = endpoint.run({"prompt": "hi"})
        assert endpoint.status(job_id)["status"] == "IN_QUEUE"
        assert endpoint.cancel(job_id)["status"] == "CANCELLED"
        assert endpoint.wait_final(job_id)["status"] == "CANCELLED"
    assert endpoint.proc.returncode == 0
    assert not endpoint.ready_path.exists()


@pytest.mark.service  # starts the local endpoint
def test_workers_that_never_get_ready_leave_no_process_behind(tmp_path, tiny_model_dir):
    handler = tmp_path / "handler.py"
    handler.write_text(NEVER_READY)
    pids_file = tmp_path / "pids"
    endpoint = EndpointProcess(workers=1, handler=handler, model=tiny_model_dir,
                               endpoint_id="never", log_path=tmp_path / "log",
                               env={"PIDS_FILE": str(pids_file)})
    with pytest.raises(EndpointError, match="1 worker\\(s\\) not ready after 20 s"):
        with endpoint:
            endpoint.wait_workers(timeout=20)
    pids = [int(x) for x in pids_file.read_text().split()]
    assert len(pids) == 2, "the worker did not start its processes: the test proves nothing"
    assert not alive([endpoint.pid, *pids])
    assert not tagged(RUN_TAG, endpoint.run_tag)


def test_an_endpoint_that_cannot_listen_fails_its_start_and_is_gone(tmp_path):
    endpoint = EndpointProcess(workers=0, endpoint_id="nolisten", log_path=tmp_path / "log",
                               args=["--host", "203.0.113.1"])  # not an address of ours
    with pytest.raises(EndpointError, match="exited with code 1"):
        endpoint.start()
    assert "cannot listen on 203.0.113.1" in endpoint.log_text()
    assert not alive([endpoint.pid])


@pytest.mark.service  # starts the local endpoint
def test_waiting_for_workers_stops_early_when_they_cannot_start(tmp_path, tiny_model_dir):
    handler = tmp_path / "handler.py"
    handler.write_text('raise SystemExit("MODEL is not set")\n')
    started = time.monotonic()
    with pytest.raises(EndpointError, match="only 0 of 1 worker\\(s\\) are starting or ready"):
        with EndpointProcess(workers=1, handler=handler, model=tiny_model_dir, endpoint_id="broken",
                             log_path=tmp_path / "log") as endpoint:
            endpoint.wait_workers(timeout=300)
    assert time.monotonic() - started < 60
    assert not alive([endpoint.pid])
