#!/usr/bin/env bash
# Stages the carried part of the vLLM bundle in /tmp/b on the GPU machine (scripts/gpu/README.md).
# Once every part named in .gpu-bundle/parts.txt is there, unpacks them into vllm-bundle.sh's files.
set -euo pipefail
mkdir -p /tmp/b
cp .gpu-bundle/part.* .gpu-bundle/parts.txt /tmp/b/ 2>/dev/null || true
cd /tmp/b
missing=$(while read -r p; do [ -f "$p" ] || echo "$p"; done < parts.txt)
if [ -n "$missing" ]; then echo "staged; still missing: $missing"; exit 0; fi
[ -f install.sh ] || { cat $(cat parts.txt) | tar -xf - && echo "bundle complete"; }
# Install once here, so that parallel steps (scripts/gpu/lanes.sh) never unpack into /tmp/site together.
[ -f installed ] || { bash -c 'source /tmp/b/install.sh' && touch installed; }
ls /tmp/b
