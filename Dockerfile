# syntax=docker/dockerfile:1.7
# Runpod LLM kit, base image: CUDA + vLLM, the kit, one model baked in.
# The same image is a development pod (SSH + Jupyter Lab) or a serverless worker;
# MODE_TO_RUN picks at start (see scripts/start.sh).
#
#   docker build --platform linux/amd64 -t you/runpod-llm-kit:smollm2 \
#       --build-arg MODEL=HuggingFaceTB/SmolLM2-135M-Instruct \
#       --secret id=HF_TOKEN,env=HF_TOKEN .      # the secret only for gated models
#
# Layers go from slow-and-stable to fast-changing: system packages, Python
# packages, the model (minutes to hours), then the kit and its handler (seconds).
# Editing the notebook or the kit never downloads the model again.

# vLLM's own release image: CUDA, PyTorch and vLLM built and tested together.
# The kit's `gpu` extra pins the same vllm==0.32.0, so pip leaves it alone.
FROM vllm/vllm-openai:v0.32.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The image is the whole environment: pip installs into the system Python, where
# vLLM is. PEP 668's guard against that is meant for hosts (pip ignores the
# setting where it does not apply).
ENV PIP_BREAK_SYSTEM_PACKAGES=1

# openssh-server for pod mode; tini as PID 1 reaps the zombies that Jupyter's
# kernels and SSH sessions leave, and passes the container's signals on.
# The host keys the package generates are deleted: start.sh makes a fresh set in
# each container, so no two pods share a key anyone who pulled the image could read.
# Not pinned to package versions (DL3008): Ubuntu's archive drops superseded
# versions, which would break rebuilds; the base image's tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        openssh-server tini \
    && rm -f /etc/ssh/ssh_host_* \
    && rm -rf /var/lib/apt/lists/*

# Python dependencies, from pyproject.toml alone, so this layer is rebuilt only
# when the pins change. vllm is already in the base image at the pinned version.
WORKDIR /opt/runpod-llm-kit
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["gpu"]))' \
        > /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && python3 -c 'import vllm, runpod, jupyterlab; print("vllm", vllm.__version__, "runpod", runpod.__version__, "jupyterlab", jupyterlab.__version__)'

# --- the model, downloaded once at build time ----------------------------------
# MODEL: a Hugging Face repo id (org/name). MODEL_ARG is the original template's
# README spelling, accepted too; MODEL wins when both are given.
ARG MODEL_ARG=""
ARG MODEL="${MODEL_ARG:-HuggingFaceTB/SmolLM2-135M-Instruct}"
# /models, not /workspace or /runpod-volume: a pod volume mounts at /workspace
# and a serverless network volume at /runpod-volume, and either hides what the
# image has there.
ARG MODEL_ROOT=/models

# Only the download code, so that editing the rest of the kit keeps this layer.
COPY scripts/llmkit/__init__.py scripts/llmkit/paths.py scripts/llmkit/models.py /opt/llmkit-download/llmkit/
# A gated model's token comes in as a BuildKit secret: mounted for this one RUN,
# in no layer, no ARG or ENV, not in `docker history`. Build without it for public
# models. The progress bars show in `--progress=plain` output.
RUN --mount=type=secret,id=HF_TOKEN,required=false \
    HF_TOKEN_FILE=/run/secrets/HF_TOKEN HF_HOME=/tmp/hf-build PYTHONPATH=/opt/llmkit-download \
        python3 -m llmkit.models download "${MODEL}" --dest "${MODEL_ROOT}/${MODEL}" \
    && rm -rf /tmp/hf-build "${MODEL_ROOT}/${MODEL}/.cache" /opt/llmkit-download \
    && du -sh "${MODEL_ROOT}/${MODEL}"

# --- the kit, the notebook and the exported handler ----------------------------
COPY scripts/llmkit ./scripts/llmkit
COPY handler_template ./handler_template
COPY notebooks ./notebooks
# Editable, so the exporter finds handler_template/ and the notebook beside it.
# The kernel name matches the notebook's kernelspec.
RUN python3 -m pip install --no-cache-dir --no-deps -e . \
    && python3 -m ipykernel install --sys-prefix --name runpod-llm-kit \
        --display-name "Python (runpod-llm-kit)" \
    && python3 -m llmkit.export notebooks/handler_dev.ipynb -o /app/handler.py

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
# MODEL_ID keeps the repo id it came from.
ENV MODEL_ID="${MODEL}" \
    MODEL_ROOT="${MODEL_ROOT}"
ENV MODEL="${MODEL_ROOT}/${MODEL_ID}" \
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
