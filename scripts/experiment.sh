#!/usr/bin/env bash
# `make experiment`: every backend in its own container when the containers can run here, else
# natively (the same `lab` CLI either way). Extra arguments go to `lab experiment` (e.g. --model
# synthetic:llama-8b --workload sharegpt-like).
#
# The containers need a Docker engine that answers, compose v2 (installed into .venv-host when the
# plugin is missing), a base image (built offline where no registry answers) and, on an NVIDIA
# host, the NVIDIA Container Toolkit. When one of these is impossible here, one line says which and
# the experiment runs natively in .venv. LAB_RUNTIME=docker stops (exit 2) instead;
# LAB_RUNTIME=native skips the containers. LAB_VENV / LAB_HOST_VENV move the two environments.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${LAB_RUNTIME:-auto}
venv=${LAB_VENV:-.venv}
host_venv=${LAB_HOST_VENV:-.venv-host}

why=""
if [ "$runtime" != native ]; then
  log=$(mktemp)
  if ! docker info >/dev/null 2>&1; then
    why="no Docker engine answers (docker info failed; start it: sudo systemctl start docker, or sudo dockerd &)"
  elif ! scripts/setup-venv.sh "$host_venv" host; then
    why="the orchestrator's environment $host_venv could not be set up"
  # Its lines show as they come; the last one says why when it fails.
  elif ! scripts/docker-host-setup.sh "$host_venv" 2>&1 >&2 | tee "$log" >&2; then
    why=$(tail -n1 "$log" | sed 's/^docker-host-setup: //')
  elif ! "$host_venv/bin/lab" images preflight >"$log" 2>&1; then
    why=$(tail -n1 "$log" | sed 's/^error: //')
  fi
  rm -f "$log"
  if [ -z "$why" ]; then
    exec "$host_venv/bin/lab" experiment --runtime docker "$@"
  fi
  if [ "$runtime" = docker ]; then
    echo "error: LAB_RUNTIME=docker, but the containers cannot run here: $why" >&2
    exit 2
  fi
  echo "containers unavailable ($why): running natively in $venv" >&2
fi
scripts/setup-venv.sh "$venv" full
exec "$venv/bin/lab" experiment --runtime native "$@"
