"""Fixtures of the unit tests."""

from __future__ import annotations

import os
import sys

import pytest

from lab.launchers.process import LabProcess


class FakeLauncher:
    """A stand-in for a launcher that starts a sleeping Python instead of `lab` (real processes)."""

    runtime = "fake"

    def start(self, service, args, name, **popen_kwargs) -> LabProcess:
        return LabProcess([sys.executable, "-c", "import time; time.sleep(600)"], dict(os.environ), name)


@pytest.fixture
def fake_launcher() -> FakeLauncher:
    return FakeLauncher()
