# The interface people and CI share. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch for the Transformers engine run locally. On a machine without a GPU, a CPU build is enough,
# e.g. make setup TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
MATRIX ?= $(if $(HAS_GPU),matrix.yaml,matrix-cpu.yaml)

# Local base image for CPU image builds where no registry is reachable (Debian bookworm, debootstrap).
BASE_IMAGE_LOCAL ?= inference-matrix/bookworm-base:local
DEBIAN_MIRROR ?= http://deb.debian.org/debian

# llama.cpp for local (no-container) llama.cpp cells: built from the source the pinned
# llama-cpp-python sdist vendors, into $(VENV)/llama.cpp, CUDA kernels when a GPU is found.
LLAMA_CPP_PYTHON ?= 0.3.36
LLAMA_CPP_CMAKE_ARGS ?= $(if $(HAS_GPU),-DGGML_CUDA=on,-DGGML_NATIVE=off)
# Or take that build from a built llama.cpp image instead of compiling it a second time (CI does:
# LLAMA_CPP_FROM_IMAGE=<the cpu image's tag>): the image's /opt/venv/llama.cpp, built by the same script from
# the same sdist; refused unless its BUILD_INFO names this version and these cmake arguments.
LLAMA_CPP_FROM_IMAGE ?=

# gpt-fast for local (no-container) gpt-fast cells: its source at the image's pinned commit, into
# $(VENV)/gpt-fast (where the entrypoint looks when GPT_FAST_HOME is unset), and what its scripts import.
GPT_FAST_COMMIT ?= 32971d3129541c5bfb4f715abc33d1c5f408d204
GPT_FAST_REPO ?= https://github.com/pytorch-labs/gpt-fast
# mlc-llm's Python source for MLC cells without MLC's wheels (`make setup-mlc`): the commit whose compile
# path runs on apache-tvm 0.27 through entrypoints/mlc_overlay; MLC_LLM_REPO may be a local clone.
MLC_LLM_COMMIT ?= 79d603f085f50500e9509fa01785ffa7ecfaaa93
MLC_LLM_REPO ?= https://github.com/mlc-ai/mlc-llm

.PHONY: help setup setup-python setup-llamacpp setup-gptfast setup-gptq-quantiser setup-aiperf setup-mlc run test test-fast lint format clean base-image images-check

help:  ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z%-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: setup-python $(VENV)/llama.cpp/BUILD_INFO  ## create .venv: the runner, the Transformers and llama.cpp engines, test tools

setup-python: $(VENV)/.installed  ## only the Python side of setup: the runner, torch + transformers, test tools (no llama.cpp build)

# installed once, and again only when pyproject.toml changes (make -B setup-python forces it)
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[transformers,ctranslate2,mlc,ray,test]'  # mlc: apache-tvm; mlc-llm's source comes with setup-mlc; ray: --executor ray
	touch $@

setup-llamacpp: $(VENV)/llama.cpp/BUILD_INFO  ## (re)build only llama.cpp into .venv (part of setup; a few minutes)

# the sdist (--no-binary for it alone: with :all:, pip would also build its build tools, cmake among them,
# from source, minutes on every run where pip keeps no cache, as in CI)
$(VENV)/llama.cpp/BUILD_INFO: images/llamacpp/build-llama-cpp.sh | $(BIN)/python
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && set -e \
	 && $(BIN)/pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $$tmp \
	 && tar -xzf $$tmp/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $$tmp \
	 && rm -rf $(VENV)/llama.cpp \
	 && if [ -n "$(LLAMA_CPP_FROM_IMAGE)" ]; then \
	      echo "taking llama.cpp $(LLAMA_CPP_PYTHON) ($(LLAMA_CPP_CMAKE_ARGS)) from $(LLAMA_CPP_FROM_IMAGE) into $(VENV)/llama.cpp" \
	      && cid=$$(docker create $(LLAMA_CPP_FROM_IMAGE) true) \
	      && { docker cp $$cid:/opt/venv/llama.cpp $(VENV)/llama.cpp >/dev/null || true; } && docker rm -f $$cid >/dev/null \
	      && grep -qx "llama_cpp_python=$(LLAMA_CPP_PYTHON)" $(VENV)/llama.cpp/BUILD_INFO \
	      && grep -qx -- "cmake_args=$(LLAMA_CPP_CMAKE_ARGS)" $(VENV)/llama.cpp/BUILD_INFO \
	      || { echo "LLAMA_CPP_FROM_IMAGE=$(LLAMA_CPP_FROM_IMAGE): no llama.cpp $(LLAMA_CPP_PYTHON) built with '$(LLAMA_CPP_CMAKE_ARGS)' in /opt/venv/llama.cpp there (BUILD_INFO: $$(tr '\n' ' ' < $(VENV)/llama.cpp/BUILD_INFO 2>/dev/null)); drop it to build here"; rm -rf $(VENV)/llama.cpp; exit 1; }; \
	    else \
	      echo "building llama.cpp $(LLAMA_CPP_PYTHON) into $(VENV)/llama.cpp ($(LLAMA_CPP_CMAKE_ARGS))" \
	      && bash images/llamacpp/build-llama-cpp.sh $$tmp/llama_cpp_python-$(LLAMA_CPP_PYTHON) $(VENV)/llama.cpp \
	           $(LLAMA_CPP_CMAKE_ARGS) >$$tmp/build.log 2>&1 || { tail -30 $$tmp/build.log; exit 1; }; \
	    fi; \
	 CMAKE_ARGS="-DLLAMA_BUILD=OFF" $(BIN)/pip install -q $$tmp/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz

setup-gptfast: $(VENV)/gpt-fast/COMMIT  ## fetch gpt-fast's source at the pinned commit into .venv/gpt-fast (needs its git host), and tiktoken

$(VENV)/gpt-fast/COMMIT: | $(VENV)/.installed
	rm -rf $(VENV)/gpt-fast
	git clone -q $(GPT_FAST_REPO) $(VENV)/gpt-fast && git -C $(VENV)/gpt-fast checkout -q $(GPT_FAST_COMMIT)
	$(BIN)/pip install -q tiktoken==0.14.0
	echo $(GPT_FAST_COMMIT) > $@

setup-mlc: $(VENV)/mlc-llm/COMMIT  ## apache-tvm 0.27 and mlc-llm's Python source at the pinned commit into .venv/mlc-llm (needs its git host): MLC cells without MLC's wheels

$(VENV)/mlc-llm/COMMIT: | $(VENV)/.installed
	rm -rf $(VENV)/mlc-llm && tmp=$$(mktemp -d) \
	 && git clone -q --bare $(MLC_LLM_REPO) $$tmp/repo && mkdir -p $(VENV)/mlc-llm \
	 && git --git-dir=$$tmp/repo archive $(MLC_LLM_COMMIT) python | tar -x -C $(VENV)/mlc-llm; \
	 status=$$?; rm -rf $$tmp; exit $$status
	$(BIN)/pip install -q -e '.[mlc]'
	echo $(MLC_LLM_COMMIT) > $@

# GPTQModel, ExLlamaV2's GPTQ quantiser for real models, in a venv of its own as the exllamav2 image
# has it (/opt/gptq-quantiser): the side venv's pins and the image's torch, both read from
# images/exllamav2/image.yaml (PyPI's torch 2.11 is a CUDA build; it runs on CPU too).
GPTQ_QUANTISER := $(VENV)/gptq-quantiser
GPTQ_PINS = $(shell $(BIN)/python -c "import yaml; s = yaml.safe_load(open('images/exllamav2/image.yaml')); \
  print(' '.join([r for r in s['flavours']['gpu']['requirements'] if r.startswith('torch==')] + s['side_venv']['requirements']))")

setup-gptq-quantiser: $(GPTQ_QUANTISER)/.installed  ## GPTQModel's venv (about 3 GB: CUDA torch) for GPTQ cells of real models run locally, and its test

$(GPTQ_QUANTISER)/.installed: images/exllamav2/image.yaml | $(VENV)/.installed
	rm -rf $(GPTQ_QUANTISER) && $(PYTHON) -m venv $(GPTQ_QUANTISER)
	$(GPTQ_QUANTISER)/bin/pip install -q $(GPTQ_PINS)
	touch $@

# AIPerf, the load generator of serving cells (runner/serving/loadgen.py), in a venv of its own: its
# dependencies (pandas 2, rich, ...) stay out of the runner's and the engines'.
AIPERF ?= aiperf==0.13.0
AIPERF_VENV := $(VENV)/aiperf

setup-aiperf: $(AIPERF_VENV)/.installed  ## AIPerf (the serving cells' load generator) into .venv/aiperf

$(AIPERF_VENV)/.installed: | $(VENV)/.installed
	rm -rf $(AIPERF_VENV) && $(PYTHON) -m venv $(AIPERF_VENV)
	$(AIPERF_VENV)/bin/pip install -q $(AIPERF)
	touch $@

run: setup  ## run the main matrix (matrix.yaml on a GPU host, else the tiny CPU matrix)
	@if [ -z "$(HAS_GPU)" ]; then echo "No NVIDIA GPU found: running the tiny CPU matrix ($(MATRIX)) instead of matrix.yaml."; fi
	$(BIN)/python -m runner $(MATRIX) $(ARGS)

test: setup setup-gptq-quantiser setup-aiperf lint  ## lint, then every test: unit, real engines on the tiny model, Docker (CI runs this)
	$(BIN)/python -m pytest -q --durations=20 tests  # the 20 slowest, to watch CI time

test-fast: setup-python lint  ## lint, then the unit tier only (no Docker, no real engine runs; about a minute)
	$(BIN)/python -m pytest -q -m "not docker and not slow" tests

lint: setup-python  ## ruff lint and format check
	$(BIN)/ruff check runner entrypoints tests
	$(BIN)/ruff format --check runner entrypoints tests

format: setup-python  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix runner entrypoints tests
	$(BIN)/ruff format runner entrypoints tests

$(VENV)/.host: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e . && touch $@

image-%: $(VENV)/.host  ## build an engine's image, e.g. make image-vllm (FLAVOUR=gpu|cpu|all, default: this host's; VERSION=0.23.0: another release; CUDA=12.8: torch's CUDA 12.8 build where offered)
	$(BIN)/python -m runner build $* $(if $(FLAVOUR),--flavour $(FLAVOUR)) $(if $(VERSION),--engine-version $(VERSION)) $(if $(CUDA),--cuda $(CUDA)) $(BUILD_ARGS)

images-check: $(VENV)/.host  ## check that images/*/Dockerfile* match their template
	$(BIN)/python -m runner images --check

base-image:  ## make $(BASE_IMAGE_LOCAL) with debootstrap (root; for hosts that cannot pull images)
	@if docker image inspect $(BASE_IMAGE_LOCAL) >/dev/null 2>&1; then echo "$(BASE_IMAGE_LOCAL) exists"; else \
	  dir=$$(mktemp -d) && debootstrap --variant=minbase bookworm $$dir/root $(DEBIAN_MIRROR) >$$dir/debootstrap.log 2>&1 \
	  || { tail -20 $$dir/debootstrap.log; exit 1; }; \
	  tar -C $$dir/root -c . | docker import - $(BASE_IMAGE_LOCAL) && rm -rf $$dir; fi

clean:  ## remove the venv and run folders (not the model store)
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
