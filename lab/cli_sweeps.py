"""`lab experiment`'s sweep options and what they become: offered request rates (online serving,
issue 16: every rate in one process per backend, `lab.runner`) and memory-sharing points (issue 17:
one run folder a point, `lab.experiments.sharing`). Part of the command line, beside `lab.cli_options`.

The two do not combine: a sharing sweep runs offline (every request at t=0), and a sharing sweep with
a finite --request-rate or a --max-concurrency exits 2 before anything starts
(`lab.config.SHARING_ONLINE`, which `EngineSettings` checks for any other way in, a spec file).
"""

from __future__ import annotations

import click

from lab.config import SHARING_ONLINE
from lab.errors import LabInputError
from lab.experiments.sharing import SharingPoint, parse_counts, sharing_points
from lab.online_settings import OnlineSettings, parse_rates

SHARING_SWEEPS = (("--n", "n_list", 1), ("--beam-width", "beam_list", 1), ("--shared-prefix-tokens", "prefix_list", 0))


def online_options(func):
    """Online serving (issue 16): requests arriving over time, a sweep of offered rates, goodput's SLOs."""
    options = [
        click.option(
            "--request-rate",
            "request_rate",
            default="inf",
            show_default=True,
            help="Offered request rates, requests/s, each a timed pass of its own, e.g. 1,2,4,8,inf (inf: every "
            "request at t=0, the offline scenario). Arrivals are seeded (--seed), the same for every backend.",
        ),
        click.option(
            "--burstiness",
            type=float,
            default=1.0,
            show_default=True,
            help="Shape of the gamma-distributed gaps between arrivals (1: Poisson; <1 burstier), as vllm bench.",
        ),
        click.option("--max-concurrency", type=int, default=None, help="The most requests in flight at once."),
        click.option(
            "--batch-wait",
            "batch_wait_s",
            type=float,
            default=0.0,
            show_default=True,
            help="hf/batched and hf/static-cache online: seconds the oldest queued request waits for a batch to fill.",
        ),
        click.option("--slo-ttft", "slo_ttft_s", type=float, default=None, help="Goodput's SLO on TTFT, seconds."),
        click.option("--slo-tpot", "slo_tpot_s", type=float, default=None, help="Goodput's SLO on TPOT, seconds."),
        click.option("--slo-e2e", "slo_e2e_s", type=float, default=None, help="Goodput's SLO on E2E latency, seconds."),
        click.option(
            "--norm-latency-bound",
            "norm_latency_bound_s",
            type=float,
            default=None,
            help="Normalized latency (s per output token) a sustained rate stays under (default: 4x the lowest "
            "measured at the sweep's lowest rate).",
        ),
        click.option(
            "--stop-at-saturation",
            is_flag=True,
            help="Skip a backend's higher rates once one of its rates saturated.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


ONLINE_KEYS = (
    "request_rate",
    "burstiness",
    "max_concurrency",
    "batch_wait_s",
    "slo_ttft_s",
    "slo_tpot_s",
    "slo_e2e_s",
    "norm_latency_bound_s",
    "stop_at_saturation",
)


def online_settings(kw: dict) -> OnlineSettings:
    """The online options of a command (`online_options`); the defaults (offline) where it has none."""
    if "request_rate" not in kw:
        return OnlineSettings()
    values = {key: kw[key] for key in ONLINE_KEYS if key != "request_rate"}
    return OnlineSettings(request_rates=parse_rates(kw["request_rate"]), **values)


def sharing_options(func):
    """`lab experiment`'s memory-sharing sweep (lab.experiments.sharing): any of them makes it one."""
    options = [
        click.option("--n", "n_list", default=None, help="Parallel samples per request, a sweep: e.g. 1,2,4,6."),
        click.option("--beam-width", "beam_list", default=None, help="Beam search widths, a sweep: e.g. 2,4,6."),
        click.option(
            "--shared-prefix-tokens",
            "prefix_list",
            default=None,
            help="Every prompt starts with the same K tokens, a sweep: e.g. 80,341 (one-shot, five-shot).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def sharing_sweep(kw: dict) -> list[SharingPoint]:
    """The sharing sweep's points (taking its options out of `kw`); [] when none is given. LabInputError
    for bad counts, and for a sharing sweep whose requests would arrive over time (module docstring)."""
    lists = [kw.pop(key) for _, key, _ in SHARING_SWEEPS]
    if not any(lists):
        return []
    points = sharing_points(
        *(parse_counts(text, option, least) for text, (option, _, least) in zip(lists, SHARING_SWEEPS))
    )
    if online_settings(kw).is_sweep:
        given = " ".join(f"{option} {text}" for text, (option, _, _) in zip(lists, SHARING_SWEEPS) if text)
        online = f"--request-rate {kw['request_rate']}" + (
            f" --max-concurrency {kw['max_concurrency']}" if kw.get("max_concurrency") else ""
        )
        raise LabInputError(f"{given} with {online}: {SHARING_ONLINE}")
    return points
