"""Whether two sets of throughput measurements agree within a tolerance, with the uncertainty said.

Runs of the same engine spread by 10-20% from one engine start to the next on a shared host (4x H100,
2026-11-27), so a rule on the two medians alone either calls a lucky pair "agree" or never decides.
Instead: the gap is the ratio of the two sides' geometric means less 1, and its 95% interval comes from
Welch's t on the logarithms (each side its own variance; degrees of freedom by Welch-Satterthwaite,
rounded down, so the interval errs wide). A rate is a ratio of counts to seconds, so its logarithm is the
natural scale: a gap of +x% and one of -x% are equally far from agreement.

- "agree": the whole interval lies within +-tolerance;
- "outside": the whole interval lies beyond it, on one side;
- "inconclusive": the interval straddles a limit (more runs narrow it), or a side has fewer than two
  runs (no variance to judge by).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

TOLERANCE = 0.05
# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom 1..30; beyond, the entries below.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
_T975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_T975_BEYOND = ((40, 2.021), (60, 2.000), (120, 1.980))


def t975(df: float) -> float:
    """The two-sided 95% quantile of Student's t at `df` degrees of freedom, rounded down (wider)."""
    whole = max(1, math.floor(min(df, 1e6)))
    if whole <= len(_T975):
        return _T975[whole - 1]
    below = [t for limit, t in _T975_BEYOND if whole >= limit]
    return below[-1] if below else _T975[-1]


@dataclass(frozen=True)
class Agreement:
    verdict: str  # "agree" | "outside" | "inconclusive"
    gap: float  # geometric mean of `a` / geometric mean of `b` - 1
    low: float | None  # the gap's 95% interval; None with fewer than two runs a side
    high: float | None
    median_gap: float  # median of `a` / median of `b` - 1, for the record
    tolerance: float = TOLERANCE  # the limit the verdict was judged against

    def describe(self) -> str:
        interval = "no interval: fewer than two runs a side"
        if self.low is not None:
            interval = f"95% {self.low:+.1%} to {self.high:+.1%}"
        return (
            f"gap {self.gap:+.1%} ({interval}; medians {self.median_gap:+.1%}), "
            f"limit {self.tolerance:.0%}: {self.verdict}"
        )


def agreement(a: list[float], b: list[float], tolerance: float = TOLERANCE) -> Agreement:
    """Whether `a` (e.g. the lab's requests/s, one per run) and `b` (the reference's) agree within
    `tolerance`: the module's rule. Every value must be positive."""
    if min(a + b) <= 0:
        raise ValueError("throughputs must be positive")
    median_gap = statistics.median(a) / statistics.median(b) - 1
    log_a, log_b = [math.log(v) for v in a], [math.log(v) for v in b]
    diff = statistics.fmean(log_a) - statistics.fmean(log_b)
    gap = math.exp(diff) - 1
    if min(len(a), len(b)) < 2:
        return Agreement("inconclusive", gap, None, None, median_gap, tolerance)
    var_a, var_b = statistics.variance(log_a) / len(a), statistics.variance(log_b) / len(b)
    se = math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1)) if se > 0 else math.inf
    half = t975(df) * se
    low, high = math.exp(diff - half) - 1, math.exp(diff + half) - 1
    if low >= -tolerance and high <= tolerance:
        verdict = "agree"
    elif low > tolerance or high < -tolerance:
        verdict = "outside"
    else:
        verdict = "inconclusive"
    return Agreement(verdict, gap, low, high, median_gap, tolerance)
