"""scripts/start.sh, run for real as the image runs it, on high ports.

Pod mode starts a real sshd (key-only) and a real Jupyter Lab; serverless and
`both` modes exec a worker. The fast tests use a stand-in worker that reports its
PID and signals; the `engine` tests run the exported handler with vLLM against
the local endpoint (python -m llmkit.endpoint) and complete a job.

Everything a test starts lives in its own process group and is ended by it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from llmkit.paths import REPO_ROOT

START_SH = REPO_ROOT / "scripts" / "start.sh"
SSHD = Path("/usr/sbin/sshd")
needs_sshd = pytest.mark.skipif(
    not (SSHD.exists() and shutil.which("ssh") and shutil.which("ssh-keygen")),
    reason="openssh-server/openssh-client not installed (apt-get install openssh-server; "
           ".ci/run does)")
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="sshd needs root (its privilege-separation dir /run/sshd)")
# Settings from the caller's environment that would change what start.sh does.
_SCRUB = ("MODE_TO_RUN", "PUBLIC_KEY", "JUPYTER_PASSWORD", "JUPYTER_TOKEN", "MODEL",
          "MODEL_ROOT", "CONCURRENCY_MODIFIER", "MAX_MODEL_LEN", "HANDLER_PATH", "WORKER_DIR",
          "HANDLER_RELOAD")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StartSh:
    """One start.sh process (its own session), its log, and the folder it works in."""

    proc: subprocess.Popen
    tmp: Path
    env: dict
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log)
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in start.sh's log (exit {self.proc.poll()}):\n"
                             + self.log[-4000:])

    def children(self) -> list[int]:
        """PIDs still alive in this start.sh's process group."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.proc.pid and fields[0] != "Z":  # pgrp, state
                    pids.append(int(entry.name))
        return pids

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def base_env(tmp: Path, **overrides) -> dict:
    """start.sh's env for a test: every port and path in tmp, the kit's venv as PYTHON."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(
        HOME=str(home),
        PYTHON=sys.executable,
        SSH_PORT=str(free_port()),
        SSHD_CONFIG=str(tmp / "sshd_config"),
        SSH_HOST_KEY_DIR=str(tmp / "hostkeys"),
        AUTHORIZED_KEYS_FILE=str(home / ".ssh" / "authorized_keys"),
        RUNPOD_ENV_FILE=str(tmp / "rp_environment"),
        JUPYTER_PORT=str(free_port()),
        JUPYTER_IP="127.0.0.1",
        NOTEBOOK_DIR=str(tmp / "workspace" / "notebooks"),
        NOTEBOOK_SEED_DIR=str(REPO_ROOT / "notebooks"),
        PRE_START_SCRIPT=str(tmp / "pre_start.sh"),
        POST_START_SCRIPT=str(tmp / "post_start.sh"),
        HANDLER_PATH=str(REPO_ROOT / "build" / "handler.py"),
        WORKER_DIR=str(tmp / "worker"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    # A test sshd config: loopback only; StrictModes off because pytest's tmp dir
    # sits under the world-writable /tmp. start.sh adds the key-only options.
    (tmp / "sshd_config").write_text(
        "ListenAddress 127.0.0.1\nStrictModes no\nUsePAM yes\nPrintMotd no\n"
        "Subsystem sftp internal-sftp\n")
    env.update(overrides)
    return env


def launch(tmp: Path, env: dict, *args: str) -> StartSh:
    log_path = tmp / "start.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([str(START_SH), *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    log.close()
    return StartSh(proc, tmp, env, log_path)


def run_start_sh(tmp: Path, timeout: float = 30, **overrides) -> subprocess.CompletedProcess:
    env = base_env(tmp, **overrides)
    return subprocess.run([str(START_SH)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp)


def http(url: str, headers: dict | None = None, method: str = "GET", body=None,
         timeout: float = 10):
    """(status, headers, body text); no redirects followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as reply:
            return reply.status, reply.headers, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode(errors="replace")


def wait_for_jupyter(run: StartSh, timeout: float = 90) -> None:
    url = f"http://127.0.0.1:{run.env['JUPYTER_PORT']}/api/status"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise AssertionError(f"start.sh exited {run.proc.returncode}:\n{run.log[-4000:]}")
        try:
            http(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"Jupyter Lab did not answer in {timeout} s:\n{run.log[-4000:]}")


def child_cmdline(run: StartSh, name: str) -> list[str]:
    for pid in run.children():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode() for a in argv if a]
        if argv and (Path(argv[0]).name == name or argv[0].split(" ")[0] == name):
            return argv
    raise AssertionError(f"no {name} process under start.sh")


def write_hooks(tmp: Path) -> Path:
    marks = tmp / "hooks.txt"
    for hook in ("pre_start", "post_start"):
        (tmp / f"{hook}.sh").write_text(f"echo {hook} >> {marks}\n")
    return marks


def ssh(run: StartSh, key: Path, *command: str, options=()) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-p", run.env["SSH_PORT"], "-i", str(key), "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", *options,
         "root@127.0.0.1", *command],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


# --- settings that must stop the container at once ------------------------------------

@pytest.mark.parametrize("mode", ["bogus", "pods", "serverles"])
def test_unknown_mode_exits_with_a_message(tmp_path, mode):
    result = run_start_sh(tmp_path, MODE_TO_RUN=mode)
    assert result.returncode != 0
    assert "MODE_TO_RUN=" in result.stderr
    assert "expected pod, serverless, both or lb" in result.stderr
    assert not (tmp_path / "workspace").exists(), "nothing may start before the check"


@pytest.mark.parametrize("mode", ["pod", "serverless", "both"])
@pytest.mark.parametrize("value", ["0", "abc", "2.5", "-1", "1025", "99999999999"])
def test_bad_concurrency_modifier_exits_with_a_message(tmp_path, mode, value):
    result = run_start_sh(tmp_path, MODE_TO_RUN=mode, CONCURRENCY_MODIFIER=value)
    assert result.returncode != 0
    assert f"CONCURRENCY_MODIFIER='{value}' is not valid: expected an integer from 1 to 1024" \
        in result.stderr


def test_vllms_own_settings_are_left_to_vllms_parser(tmp_path):
    """start.sh checks the kit's settings (kit_settings.py); MAX_MODEL_LEN=4k is vLLM's to
    read (as `vllm serve --max-model-len 4k` does), so it must not stop here."""
    env = base_env(tmp_path, MODE_TO_RUN="serverless", MAX_MODEL_LEN="4k")
    ok = subprocess.run([str(START_SH), "--check"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "settings OK (MODE_TO_RUN=serverless)" in ok.stdout, ok.stderr


@pytest.mark.parametrize("mode", ["Serverless", "BOTH"])  # any case is fine
def test_worker_modes_without_a_handler_exit_with_a_message(tmp_path, mode):
    result = run_start_sh(tmp_path, MODE_TO_RUN=mode, HANDLER_PATH=str(tmp_path / "missing.py"))
    assert result.returncode != 0
    assert "HANDLER_PATH=" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "workspace").exists(), "nothing may start before the check"


def test_check_only_validates(tmp_path):
    env = base_env(tmp_path, MODE_TO_RUN="both", CONCURRENCY_MODIFIER="8")
    ok = subprocess.run([str(START_SH), "--check"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "settings OK (MODE_TO_RUN=both)" in ok.stdout
    env["MODE_TO_RUN"] = "nope"
    assert subprocess.run([str(START_SH), "--check"], env=env).returncode != 0


# --- pod mode: SSH + Jupyter Lab, for real -----------------------------------------------

@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """start.sh in pod mode with PUBLIC_KEY and no JUPYTER_PASSWORD."""
    tmp = tmp_path_factory.mktemp("pod")
    keys = {}
    if shutil.which("ssh-keygen"):
        for name in ("user", "stranger"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                            "-f", str(tmp / name)], check=True)
            keys[name] = tmp / name
    public_key = (keys["user"].with_suffix(".pub").read_text().strip() + "\n\n"
                  if keys else "")
    marks = write_hooks(tmp)
    env = base_env(tmp, MODE_TO_RUN="pod", PUBLIC_KEY=public_key,
                   RUNPOD_POD_ID="pod id with 'quotes' and \"more\"",
                   RUNPOD_API_KEY="rp_not_a_real_key", JUPYTER_PASSWORD="")
    started = time.monotonic()
    run = launch(tmp, env)
    run.extra.update(keys=keys, marks=marks)
    try:
        wait_for_jupyter(run)
        if keys and SSHD.exists() and os.geteuid() == 0:
            run.wait_for_log(r"Server listening on 127\.0\.0\.1 port", 30)
        run.extra["startup_s"] = time.monotonic() - started
        yield run
    finally:
        run.kill_group()


@needs_sshd
@needs_root
def test_pod_ssh_accepts_the_public_key(pod):
    result = ssh(pod, pod.extra["keys"]["user"], "echo", "hello from the pod")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from the pod"


@needs_sshd
@needs_root
def test_pod_ssh_refuses_other_keys_and_passwords(pod):
    stranger = ssh(pod, pod.extra["keys"]["stranger"], "true")
    assert stranger.returncode == 255 and "Permission denied" in stranger.stderr
    # Ask for password and keyboard-interactive only: the server offers neither.
    password = ssh(pod, pod.extra["keys"]["user"], "true", options=(
        "-v", "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
        "-o", "NumberOfPasswordPrompts=1"))
    assert password.returncode == 255
    offered = re.findall(r"Authentications that can continue: (\S+)", password.stderr)
    assert offered and set(offered) == {"publickey"}, password.stderr[-2000:]


@needs_sshd
@needs_root
def test_pod_sshd_effective_config_is_key_only(pod):
    # sshd rewrites its process title: "sshd: /usr/sbin/sshd -D ... [listener] ...".
    title = " ".join(child_cmdline(pod, "sshd:"))
    argv = title.split("sshd: ", 1)[1].split(" [listener]")[0].split()
    args = [a for a in argv[1:] if a not in ("-D", "-e")]
    result = subprocess.run([str(SSHD), "-T", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert config["passwordauthentication"] == "no"
    assert config["kbdinteractiveauthentication"] == "no"
    assert config["permitemptypasswords"] == "no"
    assert config["pubkeyauthentication"] == "yes"
    assert config["permitrootlogin"] == "without-password"  # sshd -T's name for prohibit-password
    assert config["authorizedkeysfile"] == pod.env["AUTHORIZED_KEYS_FILE"]
    assert config["port"] == pod.env["SSH_PORT"]


@needs_sshd
@needs_root
def test_pod_host_keys_are_made_in_the_container(pod):
    key_dir = Path(pod.env["SSH_HOST_KEY_DIR"])
    for kind in ("ed25519", "ecdsa", "rsa"):
        private = key_dir / f"ssh_host_{kind}_key"
        assert private.is_file() and stat.S_IMODE(private.stat().st_mode) == 0o600
        fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{private}.pub"],
                                     capture_output=True, text=True, check=True).stdout.split()[1]
        assert fingerprint in pod.log, "the log shows each host key's fingerprint"
    # The server presents the key it was given, not one from /etc/ssh.
    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", pod.env["SSH_PORT"],
                           "127.0.0.1"], capture_output=True, text=True, timeout=30)
    served = scan.stdout.split()[-1]
    assert served == (key_dir / "ssh_host_ed25519_key.pub").read_text().split()[1]


@needs_sshd
@needs_root
def test_pod_authorized_keys_hold_the_key_once(pod):
    keys_file = Path(pod.env["AUTHORIZED_KEYS_FILE"])
    lines = keys_file.read_text().splitlines()
    assert lines == [pod.extra["keys"]["user"].with_suffix(".pub").read_text().strip()]
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_file.parent.stat().st_mode) == 0o700


@needs_sshd
@needs_root
def test_pod_ssh_sessions_see_the_runpod_environment(pod):
    env_file = Path(pod.env["RUNPOD_ENV_FILE"])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, "it may hold API keys"
    text = env_file.read_text()
    assert "JUPYTER_PASSWORD" not in text and "PUBLIC_KEY" not in text
    result = ssh(pod, pod.extra["keys"]["user"],
                 f'. {env_file} && printf "%s|%s|%s" "$RUNPOD_POD_ID" "$RUNPOD_API_KEY" '
                 '"$MODE_TO_RUN"')
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pod id with 'quotes' and \"more\"|rp_not_a_real_key|pod"
    # An interactive shell of that HOME reads the file through its .bashrc.
    shell = subprocess.run(["bash", "-ic", 'printf "%s" "$RUNPOD_POD_ID"'],
                           env={"HOME": pod.env["HOME"], "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert shell.stdout == "pod id with 'quotes' and \"more\""


def test_pod_jupyter_needs_the_token(pod):
    token = pod.wait_for_log(r"generated token: ([0-9a-f]{48})\b", 5)[1]
    base = f"http://127.0.0.1:{pod.env['JUPYTER_PORT']}"
    assert http(f"{base}/api/status")[0] == 403
    assert http(f"{base}/api/status", {"Authorization": "token wrong"})[0] == 403
    assert http(f"{base}/api/status?token=wrong")[0] == 403
    assert http(f"{base}/api/status", {"Authorization": f"token {token}"})[0] == 200
    status, _, body = http(f"{base}/api/status?token={token}")
    assert status == 200 and "started" in json.loads(body)
    # The browser without a token lands on the login page, not in the lab.
    status, headers, _ = http(f"{base}/lab")
    assert status == 302 and "/login" in headers["Location"]
    # The token reaches Jupyter through its environment, not its command line.
    assert token not in " ".join(child_cmdline(pod, Path(sys.executable).name))


def test_pod_jupyter_opens_on_the_notebooks(pod):
    token = pod.wait_for_log(r"generated token: ([0-9a-f]{48})\b", 5)[1]
    base = f"http://127.0.0.1:{pod.env['JUPYTER_PORT']}"
    # Jupyter's files start at the volume (a clone of the user's repository opens there too).
    status, _, body = http(f"{base}/api/contents/notebooks?token={token}")
    assert status == 200
    assert "handler_dev.ipynb" in [item["name"] for item in json.loads(body)["content"]]
    copied = Path(pod.env["NOTEBOOK_DIR"]) / "handler_dev.ipynb"
    assert copied.read_bytes() == (REPO_ROOT / "notebooks" / "handler_dev.ipynb").read_bytes()
    recipes = sorted(p.name for p in (REPO_ROOT / "notebooks" / "recipes").glob("*.ipynb"))
    assert recipes and sorted(p.name for p in (copied.parent / "recipes").glob("*.ipynb")) \
        == recipes, "the recipes are seeded beside the notebook"
    status, headers, _ = http(f"{base}/?token={token}")
    assert status == 302 and \
        urlsplit(headers["Location"]).path == "/lab/tree/notebooks/handler_dev.ipynb"
    status, _, page = http(f"{base}/lab/tree/notebooks/handler_dev.ipynb?token={token}")
    assert status == 200 and "JupyterLab" in page


def test_pod_notebook_exports_from_its_own_kernel(pod):
    """The notebook's Export cell, run in the notebook's kernel as JupyterLab starts it:
    Jupyter names the notebook, and build/handler.py lands beside notebooks/, the same
    file `make export-handler` writes from the repository."""
    from jupyter_api import Jupyter

    token = pod.wait_for_log(r"generated token: ([0-9a-f]{48})\b", 5)[1]
    jupyter = Jupyter(f"http://127.0.0.1:{pod.env['JUPYTER_PORT']}", token)
    printed = jupyter.run("notebooks/handler_dev.ipynb",
                          "from llmkit.export import export_notebook\nexport_notebook()")
    written = Path(pod.env["NOTEBOOK_DIR"]).parent / "build" / "handler.py"
    assert f"wrote {written} from " in printed, printed
    assert "installed at" not in printed, "pod mode: no worker to install it for"
    assert written.read_text() == (REPO_ROOT / "build" / "handler.py").read_text()


def test_pod_hooks_ran_in_order(pod):
    assert pod.extra["marks"].read_text().split() == ["pre_start", "post_start"]


def test_pod_sigterm_stops_every_service(pod):
    assert pod.proc.poll() is None, pod.log[-3000:]
    assert len(pod.children()) >= 3  # start.sh, Jupyter, sleep (+ sshd)
    pod.proc.send_signal(signal.SIGTERM)
    assert pod.proc.wait(30) == 0
    deadline = time.monotonic() + 15
    while pod.children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pod.children() == [], "services outlived start.sh"


@pytest.mark.service  # starts Jupyter Lab
def test_pod_with_jupyter_password_and_no_ssh(tmp_path):
    """JUPYTER_PASSWORD is the token; no PUBLIC_KEY means no sshd; user notebooks are kept."""
    notebooks = tmp_path / "workspace" / "notebooks"
    notebooks.mkdir(parents=True)
    (notebooks / "handler_dev.ipynb").write_text('{"my": "edits"}')
    (tmp_path / "models" / "org" / "baked").mkdir(parents=True)
    env = base_env(tmp_path, MODE_TO_RUN="pod", JUPYTER_PASSWORD="correct horse battery",
                   MODEL="org/baked", MODEL_ROOT=str(tmp_path / "models"))
    run = launch(tmp_path, env)
    try:
        wait_for_jupyter(run)
        base = f"http://127.0.0.1:{env['JUPYTER_PORT']}"
        assert http(f"{base}/api/status")[0] == 403
        good = {"Authorization": "token correct horse battery"}
        assert http(f"{base}/api/status", good)[0] == 200
        assert "correct horse battery" not in run.log, "the password is never logged"
        assert "SSH: off" in run.log and not [
            p for p in run.children() if "sshd" in Path(f"/proc/{p}/comm").read_text()]
        assert (notebooks / "handler_dev.ipynb").read_text() == '{"my": "edits"}'
        assert "keeping your" in run.log
        # MODEL given as the repo id the image baked resolves to the baked folder.
        env_text = Path(env["RUNPOD_ENV_FILE"]).read_text()
        assert f"export MODEL={tmp_path}/models/org/baked" in env_text
    finally:
        run.kill_group()


# --- serverless and both: the worker is exec'd -------------------------------------------

FAKE_WORKER = """\
import json, os, signal, sys, time
out = sys.argv[0] + ".json"
def stop(signum, frame):
    with open(out + ".signal", "w") as f:
        f.write(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
with open(out, "w") as f:
    json.dump({"pid": os.getpid(), "cwd": os.getcwd(),
               "model": os.environ.get("MODEL"),
               "reload": os.environ.get("HANDLER_RELOAD"),
               "leftover": os.path.exists(".runpod_jobs.pkl")}, f)
while True:
    time.sleep(0.1)
"""


def fake_worker(tmp: Path) -> Path:
    path = tmp / "fake_handler.py"
    path.write_text(FAKE_WORKER)
    return path


def wait_for_file(path: Path, run: StartSh, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return path.read_text()
        if run.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{path.name} never appeared:\n{run.log[-3000:]}")


def test_serverless_execs_the_worker_which_gets_sigterm(tmp_path):
    handler = fake_worker(tmp_path)
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    (worker_dir / ".runpod_jobs.pkl").write_bytes(b"a dead job from the last run")
    marks = write_hooks(tmp_path)
    env = base_env(tmp_path, MODE_TO_RUN="serverless", HANDLER_PATH=str(handler),
                   MODEL="/models/some/model")
    run = launch(tmp_path, env)
    try:
        info = json.loads(wait_for_file(Path(f"{handler}.json"), run))
        assert info["pid"] == run.proc.pid, "start.sh must exec the worker, not run it as a child"
        assert info["cwd"] == str(worker_dir) and info["leftover"] is False
        assert info["model"] == "/models/some/model"
        assert info["reload"] is None, "a production worker watches no files"
        assert marks.read_text().split() == ["pre_start", "post_start"]
        assert not (tmp_path / "workspace").exists(), "no pod services in serverless mode"
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(20) == 0
        assert Path(f"{handler}.json.signal").read_text() == "SIGTERM"
    finally:
        run.kill_group()


@pytest.mark.service  # starts Jupyter Lab
def test_both_runs_jupyter_and_execs_the_worker(tmp_path):
    handler = fake_worker(tmp_path)
    env = base_env(tmp_path, MODE_TO_RUN="both", HANDLER_PATH=str(handler),
                   JUPYTER_PASSWORD="both-mode-token")
    run = launch(tmp_path, env)
    try:
        info = json.loads(wait_for_file(Path(f"{handler}.json"), run))
        assert info["pid"] == run.proc.pid, "the worker is in the foreground (exec)"
        assert info["reload"] == "true", "beside Jupyter the worker serves each new export"
        wait_for_jupyter(run)
        base = f"http://127.0.0.1:{env['JUPYTER_PORT']}"
        assert http(f"{base}/api/status")[0] == 403
        assert http(f"{base}/api/status", {"Authorization": "token both-mode-token"})[0] == 200
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(20) == 0
        assert Path(f"{handler}.json.signal").read_text() == "SIGTERM"
    finally:
        run.kill_group()


# --- the real worker: exported handler.py + vLLM + the local endpoint -------------------------

API_KEY = "test-key-start-sh"
ENDPOINT_ID = "startsh"


@pytest.fixture
def endpoint(tmp_path):
    """python -m llmkit.endpoint with no workers of its own: start.sh brings the worker."""
    from llmkit.endpoint.harness import EndpointProcess

    with EndpointProcess(workers=0, endpoint_id=ENDPOINT_ID, api_key=API_KEY,
                         log_path=tmp_path / "endpoint.log") as running:
        yield running.base, {**running.headers, "content-type": "application/json"}


@pytest.mark.engine
@pytest.mark.parametrize("mode", ["serverless", "both"])
def test_worker_completes_a_job_from_the_local_endpoint(tmp_path, endpoint, tiny_model_dir,
                                                        handler_path, mode):
    from llmkit.endpoint import worker_env

    base, auth = endpoint
    env = base_env(tmp_path, MODE_TO_RUN=mode, MODEL=str(tiny_model_dir), MAX_MODEL_LEN="512",
                   HANDLER_PATH=str(handler_path), CONCURRENCY_MODIFIER="2",
                   JUPYTER_PASSWORD="engine-test")
    env.update(worker_env(base, ENDPOINT_ID, f"startsh-{mode}", API_KEY))
    # The SDK says it got SIGTERM only at DEBUG (the worker's default is INFO).
    env["RUNPOD_DEBUG_LEVEL"] = "DEBUG"
    started = time.monotonic()
    run = launch(tmp_path, env)
    try:
        # The worker is start.sh itself (exec), and vLLM starts before it takes jobs.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            argv = Path(f"/proc/{run.proc.pid}/cmdline").read_bytes().split(b"\0")
            if str(handler_path).encode() in argv:
                break
            time.sleep(0.2)
        assert argv[:1] == [sys.executable.encode()] and str(handler_path).encode() in argv, argv
        job = {"input": {"prompt": "What is the capital of France?",
                         "sampling_params": {"max_tokens": 8, "temperature": 0, "seed": 0}}}
        status, _, body = http(f"{base}/{ENDPOINT_ID}/runsync?wait=300000", auth, "POST", job,
                               timeout=330)
        reply = json.loads(body)
        while reply.get("status") in ("IN_QUEUE", "IN_PROGRESS") and run.proc.poll() is None \
                and time.monotonic() - started < 420:
            time.sleep(2)
            reply = json.loads(http(f"{base}/{ENDPOINT_ID}/status/{reply['id']}", auth)[2])
        assert reply.get("status") == "COMPLETED", (reply, run.log[-4000:])
        output = reply["output"]
        assert isinstance(output, list) and output and isinstance(output[0]["text"], str)
        print(f"{mode}: job done {time.monotonic() - started:.0f} s after start.sh started")
        if mode == "both":
            port = env["JUPYTER_PORT"]
            assert http(f"http://127.0.0.1:{port}/api/status",
                        {"Authorization": "token engine-test"})[0] == 200
        # SIGTERM reaches the SDK itself (start.sh exec'd it) and the worker stops.
        # Its exit code is the handler's business (tests/test_handler_*), not start.sh's.
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(60)
        assert "Received shutdown signal: 15" in run.log, run.log[-3000:]
    finally:
        run.kill_group()


@pytest.mark.parametrize("shm_min_mb, warned", [("1", False), ("999999999", True)])
def test_small_dev_shm_is_named_with_its_fix(tmp_path, shm_min_mb, warned):
    """Docker's default 64 MiB /dev/shm is too small for vLLM: start.sh says so, and how
    to fix it (here /dev/shm is large, so the threshold is raised to see the warning)."""
    handler = fake_worker(tmp_path)
    env = base_env(tmp_path, MODE_TO_RUN="serverless", HANDLER_PATH=str(handler),
                   SHM_MIN_MB=shm_min_mb)
    run = launch(tmp_path, env)
    try:
        wait_for_file(Path(f"{handler}.json"), run)
        message = re.search(r"warning: /dev/shm has only \d+ MiB free.*", run.log)
        assert bool(message) == warned, run.log
        if warned:
            assert "--shm-size=1g" in message[0] and "--ipc=host" in message[0]
    finally:
        run.kill_group()
