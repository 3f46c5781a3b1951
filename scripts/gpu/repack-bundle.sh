#!/usr/bin/env bash
# Repacks the vLLM bundle that ../shared/gpu/vllm-bundle.sh wrote into .gpu-bundle/ as equal parts
# small enough to travel beside the working tree (a call carries at most 64 MiB, tree included).
#
#   scripts/gpu/repack-bundle.sh [PARTS]     # default 4; writes .gpu-bundle/part.00 .. part.NN
#
# Each call then carries one part (`scripts/gpu/stage.sh`); the call that brings the last one unpacks
# them into /tmp/b as vllm-bundle.sh's own files, and install.sh works as before.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)/.gpu-bundle"
parts=${1:-4}
# Repacking again: the earlier parts hold the original files.
[ -f vllm.part00 ] || { [ -f parts.txt ] && cat $(cat parts.txt) | tar -xf -; }
for f in deps.tar install.sh vllm.part00; do [ -f "$f" ] || { echo "no .gpu-bundle/$f: run ../shared/gpu/vllm-bundle.sh first" >&2; exit 2; }; done
rm -f part.*
tar -cf - deps.tar install.sh vllm.part0* > all.tar
size=$(stat -c %s all.tar)
split -b $(( (size + parts - 1) / parts )) -d -a 2 all.tar part.
rm all.tar deps.tar install.sh vllm.part0*
ls part.* > parts.txt
tree_mib=$(( $(cd .. && git ls-files -z | du -cb --files0-from=- | tail -n1 | cut -f1) / 1048576 ))
echo "$(wc -l < parts.txt) parts of $(( (size + parts - 1) / parts / 1048576 )) MiB; the tracked tree is about $tree_mib MiB (each call: part + tree < 64 MiB)"
