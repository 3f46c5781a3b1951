"""What one backend's process keeps of an online sweep cut off part-way: the offered rates it finished.

An online sweep (`--request-rate 1,2,inf`) runs every rate in one process (`lab.runner`). When the
process is cut during a later rate (SIGTERM: the experiment stopping it at its time limit or on its own
interrupt; or an error there, such as running out of memory), each rate it finished is whole: every
pass of it ran from the first arrival to the last token. Those rates are kept and the others named as
not run (`lab.cut.Cut`, result.json and summary.json `cut`, with the offered rates as points):

- records.jsonl, kv.jsonl and kv_passes.jsonl hold the finished rates' passes only (the runner writes
  them from `FinishedRates`); the cut rate's passes, finished or not, are dropped with it;
- result.json's `passes` and `passes_s` are the kept passes'; the cut pass's phase is renamed "cut" (not
  a timed phase, `lab.accounting.energy.TIMED_PHASES`), and the last kept pass's is "generate", as in a
  sweep stopped at saturation;
- the status stays "error" with its reason: the backend did not run its whole sweep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lab.accounting.energy import TIMED_PHASES
from lab.cut import Cut
from lab.online_settings import rate_text
from lab.records import BackendResult, KvSample, RequestRecord

CUT_PHASE = "cut"


@dataclass
class FinishedRates:
    """The offered rates a sweep has finished so far, with their records, KV samples and timed passes."""

    rates: list[float] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    kv_samples: list[KvSample] = field(default_factory=list)
    passes: int = 0  # timed passes of those rates (--repeats each)

    def add(self, rate: float, records: list[RequestRecord], kv_samples: list[KvSample], passes: int) -> None:
        """One more rate finished; `passes`: the timed passes run so far, its own included."""
        self.rates.append(rate)
        self.records.extend(records)
        self.kv_samples.extend(kv_samples)
        self.passes = passes


def keep_finished_rates(
    result: BackendResult, finished: FinishedRates, request_rates: tuple[float, ...], cut: Cut
) -> bool:
    """Mark `result` as a sweep cut after `finished`'s rates (module docstring); False, and `result`
    unchanged, where there is nothing to keep: no rate finished, or every one did."""
    left = list(request_rates[len(finished.rates) :])
    if not finished.rates or not left:
        return False
    result.passes = (result.passes or [])[: finished.passes] or None
    result.passes_s = (result.passes_s or [])[: finished.passes] or None
    if result.passes_s:
        result.generate_s = result.passes_s[-1]
    if result.passes and result.passes[-1].get("memory"):
        result.memory = result.passes[-1]["memory"]
    rename_timed_phases(result.phases, finished.passes)
    rates = [rate_text(r) for r in left]
    result.cut = dataclasses.replace(cut, cut_at=rates[0], points_not_run=rates).to_dict()
    return True


def rename_timed_phases(phases: list[dict], kept: int) -> None:
    """The first `kept` timed phases stay, the last of them "generate"; every later one becomes "cut"."""
    timed = [p for p in phases if p.get("phase") in TIMED_PHASES]
    for number, phase in enumerate(timed):
        if number >= kept:
            phase["phase"] = CUT_PHASE
        elif number == kept - 1:
            phase["phase"] = "generate"
        else:
            phase["phase"] = "repeat"
