#!/usr/bin/env bash
# Copies the carried parts of the vLLM bundle to /tmp/b on the GPU machine.
set -euo pipefail
mkdir -p /tmp/b
cp .gpu-bundle/* /tmp/b/
ls /tmp/b
