"""The PagedAttention paper's reference figures, in one place (Kwon et al., "Efficient Memory
Management for Large Language Model Serving with PagedAttention", SOSP 2023, arXiv 2309.06180).

Every table and plot that sets this lab's numbers beside the paper's takes them from here.
"""

from __future__ import annotations

# Figure 2: average share of KV-cache memory per category during the experiment of its section 6.2
# (OPT-13B on one NVIDIA A100), in percent. NOTE: for vLLM the figure gives only token states
# (96.3%); the remaining 3.7% is not broken down there.
FIG2_CATEGORIES = ("token states", "reservation", "internal fragmentation", "external fragmentation & other")
FIG2_SHARES_PCT: dict[str, dict[str, float]] = {
    "Orca (Max)": {
        "token states": 20.4,
        "reservation": 13.3,
        "internal fragmentation": 57.3,
        "external fragmentation & other": 8.9,
    },
    "Orca (Pow2)": {
        "token states": 26.8,
        "reservation": 17.9,
        "internal fragmentation": 13.6,
        "external fragmentation & other": 41.6,
    },
    "Orca (Oracle)": {"token states": 38.2, "reservation": 25.2, "external fragmentation & other": 36.6},
    "vLLM": {"token states": 96.3},
}
FIG2_TOKEN_STATES_PCT: dict[str, float] = {name: shares["token states"] for name, shares in FIG2_SHARES_PCT.items()}
FIG2_CONDITIONS = "OPT-13B on one A100, the experiment of its section 6.2"

# Figure 13a: average number of batched requests, OPT-13B on the ShareGPT trace.
FIG13A_MEAN_BATCHED: dict[str, float] = {"Orca (Max)": 7.00, "Orca (Pow2)": 9.81, "Orca (Oracle)": 13.62, "vLLM": 30.42}

# Figure 15: memory saving from sharing, OPT-13B, in percent: the blocks saved by sharing / the blocks
# without sharing, over the request rates of Figure 14. (low, high) per workload.
FIG15_SAVING_PCT: dict[str, dict[str, tuple[float, float]]] = {
    "parallel sampling": {"Alpaca": (6.1, 9.8), "ShareGPT": (16.2, 30.5)},
    "beam search": {"Alpaca": (37.6, 55.2), "ShareGPT": (44.3, 66.3)},
}
FIG15_DEFINITION = "blocks saved by sharing / total blocks without sharing"
# Section 6.4 (Figure 16): throughput with a shared few-shot prefix (WMT16 translation, LLaMA-13B),
# vLLM over Orca (Oracle), x.
FIG16_THROUGHPUT_GAIN: dict[str, float] = {"one-shot": 1.67, "five-shot": 3.58}
