"""The step bar: a redrawn line on a terminal, silent elsewhere; echoed lines always come through."""

from __future__ import annotations

import io
import time

from lab.progress import StepBar


class FakeTerminal(io.StringIO):
    """A fake: a StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_the_bar_is_quiet_when_not_on_a_terminal():
    stream = io.StringIO()
    bar = StepBar(total=2, stream=stream)
    with bar.step("hf/batched"):
        bar.echo("hf-batched: ok")
        time.sleep(0.3)
    assert stream.getvalue() == "hf-batched: ok\n"
    assert bar.done == 1


def test_the_bar_is_redrawn_on_a_terminal_and_cleared_at_the_end():
    stream = FakeTerminal()
    bar = StepBar(total=4, stream=stream, width=4)
    with bar.step("vllm/offline"):
        time.sleep(0.45)
    text = stream.getvalue()
    assert "[1/4]  vllm/offline" in text.replace("░", "")
    assert text.endswith("\r\x1b[2K")
    assert bar.line().startswith("[2/4] █░░░ ")


def test_a_failed_step_still_counts_as_done():
    bar = StepBar(total=2, stream=io.StringIO())
    try:
        with bar.step("hf/sequential"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert bar.done == 1
