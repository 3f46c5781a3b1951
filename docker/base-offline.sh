#!/usr/bin/env bash
# Makes a base image without a container registry: debootstrap a minimal Debian from the
# distribution mirror, then `docker import` it. Hosts that cannot pull (air-gapped, or the CI
# machines here) build the lab's images on it: lab.launchers.images picks it up as BASE_IMAGE when present.
#
#   docker/base-offline.sh [TAG]     default TAG: paged-attention-lab/base-offline:bookworm
#
# Env: LAB_DEBIAN_MIRROR (default: the first Debian URI in this host's apt sources).
set -euo pipefail

TAG=${1:-paged-attention-lab/base-offline:bookworm}
SUITE=bookworm
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

mirror=${LAB_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hs -m1 -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources | awk 'NR==1 {print $2}' || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -hs -m1 -E '^deb .*/debian/? ' /etc/apt/sources.list | awk 'NR==1 {print $2}' || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

# debootstrap comes from the distribution when missing (a fresh docker.io host has none), where
# this user may install packages: root, or sudo without a password.
if ! command -v debootstrap >/dev/null; then
  if [ -z "$SUDO" ] || sudo -n true 2>/dev/null; then
    echo "base-offline: installing debootstrap with apt" >&2
    $SUDO apt-get update -q >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 || true
  fi
  command -v debootstrap >/dev/null || {
    echo "base-offline: debootstrap is missing and could not be installed; fix: sudo apt-get install -y debootstrap" >&2; exit 2; }
fi

root=$(mktemp -d /tmp/lab-rootfs.XXXXXX)
trap '$SUDO rm -rf "$root"' EXIT
echo "base-offline: debootstrap $SUITE from $mirror" >&2
start=$(date +%s)
# python3-venv brings ensurepip, so the Dockerfiles need no apt at all on this base;
# ca-certificates gives pip a system bundle that an extra CA can be appended to.
log=/tmp/lab-debootstrap.log
if ! $SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" "$mirror" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "base-offline: debootstrap failed (log: $log); fix: check that $mirror is reachable," \
       "or set LAB_DEBIAN_MIRROR" >&2
  exit 1
fi
$SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
$SUDO tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$TAG" >/dev/null
echo "base-offline: $TAG built in $(( $(date +%s) - start )) s" >&2
