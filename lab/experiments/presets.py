"""Named experiments: `lab experiment --preset NAME` sets these options unless the command line gives them.

- `tutorial`: the tutorial's own run (lab.tutorial): GPT-2's shape (`synthetic:gpt2`, random weights),
  its four prompts (`seed`) with 50 new tokens each, context 512 as its log printed, one request at a
  time with transformers and all four at once with vLLM. The report then sets the tutorial's figures
  beside this run's.
"""

from __future__ import annotations

from lab import tutorial
from lab.errors import LabInputError

PRESETS: dict[str, dict] = {
    "tutorial": {
        "model": "synthetic:gpt2",
        "workload": "seed",
        "output_tokens": tutorial.NEW_TOKENS,
        "max_model_len": tutorial.MAX_SEQ_LEN,
        "backends": "hf/sequential,vllm",
    },
}


def preset_options(name: str | None) -> dict:
    """The options of preset `name` ({} for None); LabInputError naming the known presets otherwise."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise LabInputError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    return dict(PRESETS[name])
