"""Which runs `lab compare` may put side by side: the same model on the same requests, and for the
combined online tables (`sweep_compare.py`) the same arrival schedule too. Everything else that differs
(device, versions, settings) is what a comparison is about (`compare.conditions`)."""

from __future__ import annotations

from lab.errors import LabInputError
from lab.report.run_view import RunView


def identity(run: RunView) -> dict:
    """What must match for two runs to be compared: the model and the exact requests."""
    engine = run.manifest["config"]["engine"]
    workload = next((r.workload for r in run.runs if r.workload), None) or {}
    return {
        "model": engine.get("model"),
        "workload": engine.get("workload"),
        "requests": workload.get("requests", engine.get("num_requests")),
        "prompt tokens": workload.get("prompt_tokens"),
        "output tokens": workload.get("output_tokens", engine.get("output_tokens")),
    }


def schedule_identity(run: RunView) -> dict:
    """`identity` plus what draws the arrival schedule (`lab.arrivals.schedule`): the seed and the
    burstiness. Sweeps that differ here did not serve the same arrivals, so their sustained rates are not
    put in one table."""
    engine = run.engine
    return identity(run) | {"seed": engine.seed, "burstiness": engine.online.burstiness}


def differences(values: list[dict]) -> dict[str, str]:
    """{key: 'a vs b'} for every key whose value is not the same in every run."""
    return {
        key: " vs ".join(str(v.get(key)) for v in values)
        for key in values[0]
        if len({repr(v.get(key)) for v in values}) > 1
    }


def describe(differing: dict[str, str]) -> str:
    return "; ".join(f"{key}: {values}" for key, values in differing.items())


def check_comparable(runs: list[RunView], force: bool = False) -> dict[str, str]:
    """The identity differences; raises LabInputError naming them unless `force`."""
    differing = differences([identity(r) for r in runs])
    if differing and not force:
        raise LabInputError(
            f"these runs are not comparable: {describe(differing)}"
            + ". Compare runs of the same model and workload, or give --force to compare them anyway"
        )
    return differing
