#!/usr/bin/env bash
# `make experiment`: every backend in its own container when a Docker engine answers, else natively
# (the same `lab` CLI either way). LAB_RUNTIME=native|docker forces one. Extra arguments go to
# `lab experiment` (e.g. --model synthetic:llama-8b --workload sharegpt-like).
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${LAB_RUNTIME:-auto}
if [ "$runtime" != native ] && docker info >/dev/null 2>&1; then
  scripts/setup-venv.sh .venv-host host
  exec .venv-host/bin/lab experiment --runtime docker "$@"
fi
if [ "$runtime" = docker ]; then
  echo "error: LAB_RUNTIME=docker but no Docker engine answers (docker info failed); start Docker or use LAB_RUNTIME=native" >&2
  exit 2
fi
echo "no Docker engine reachable (docker info failed): running natively in .venv" >&2
scripts/setup-venv.sh .venv full
exec .venv/bin/lab experiment --runtime native "$@"
