"""`lab experiment`'s sweep options: offered request rates (online serving, issue 16), with the
settings they become. Part of the command line, beside `lab.cli_options`; the sweep itself runs in
`lab.runner` (every rate in one process per backend)."""

from __future__ import annotations

import click

from lab.online_settings import OnlineSettings, parse_rates


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
