"""Image cold start: `docker run` of the serverless image until its worker polls for
jobs, next to the same worker (build/handler.py, same model, same engine settings)
started on the host, in one run. Both poll one local endpoint in queue-only mode.

    python -m bench.image_cold_start --image runpod-llm-kit:SmolLM2-135M-Instruct-cpu

Needs a Docker engine and a CPU image built with `make image DEVICE=cpu` (the image
tests build llmkit-test/kit:SmolLM2-135M-Instruct-cpu). DOCKER picks the client.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmkit import models
from llmkit.endpoint.harness import EndpointClient, EndpointProcess
from llmkit.paths import REPO_ROOT

DOCKER = os.environ.get("DOCKER", "docker")


def takers(queue: EndpointClient) -> int:
    """Workers that can take a job. (A worker that stopped polling stays in /health's
    counts, as unhealthy, once the endpoint declares it lost.)"""
    workers = queue.health()["workers"]
    return workers["idle"] + workers["running"]


def wait_ready(queue: EndpointClient, proc_alive, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if takers(queue):
            return
        if not proc_alive() or time.monotonic() > deadline:
            raise RuntimeError("the worker did not start")
        time.sleep(0.2)


def wait_gone(queue: EndpointClient) -> None:
    while takers(queue):
        time.sleep(0.5)


def in_container(image: str, queue: EndpointClient, env: dict) -> float:
    name = f"llmkit-bench-{os.getpid()}"
    env_args = [x for k, v in {**env, "MODE_TO_RUN": "serverless"}.items()
                for x in ("-e", f"{k}={v}")]
    start = time.monotonic()
    subprocess.run([DOCKER, "run", "-d", "--name", name, "--network", "host",
                    "--shm-size=1g", *env_args, image], check=True, capture_output=True)

    def alive() -> bool:
        out = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Running}}", name],
                             capture_output=True, text=True).stdout
        return out.strip() == "true"

    try:
        wait_ready(queue, alive)
        return time.monotonic() - start
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)
        wait_gone(queue)


def on_host(queue: EndpointClient, env: dict, model: str, log: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-worker-") as work:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-u", str(REPO_ROOT / "build" / "handler.py")],
                                env={**os.environ, **env, "MODEL": model}, cwd=work,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            wait_ready(queue, lambda: proc.poll() is None)
            return time.monotonic() - start
        finally:
            proc.terminate()
            proc.wait(60)
            wait_gone(queue)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="llmkit-test/kit:SmolLM2-135M-Instruct-cpu")
    parser.add_argument("--model", default=models.DEFAULT_MODEL,
                        help="the model baked into the image, for the host run")
    args = parser.parse_args()
    model = str(models.resolve(args.model))
    logs = Path(tempfile.mkdtemp(prefix="llmkit-bench-image-"))
    with EndpointProcess(workers=0, endpoint_id="coldstart",
                         log_path=logs / "endpoint.log") as queue:
        # The worker environment the endpoint prints for a worker started elsewhere.
        line = queue.wait_for_log(r"worker env: (.*)").group(1)
        env = dict(item.split("=", 1) for item in shlex.split(line))
        container = in_container(args.image, queue, env)
        host = on_host(queue, env, model, logs / "host-worker.log")
    print("| start | until the worker polls for jobs |\n|---|---|\n"
          f"| `docker run` of {args.image} | {container:.1f} s |\n"
          f"| the same handler on the host | {host:.1f} s |\n"
          f"| ratio container / host | {container / host:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
