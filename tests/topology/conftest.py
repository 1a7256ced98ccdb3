"""Fixtures of the topology tests: example files and a manual clock for shaping."""
from __future__ import annotations

from pathlib import Path

import pytest

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
EXAMPLES = sorted(TOPOLOGIES.glob("*.yaml"))


class StepClock:
    """The smallest clock the shaper needs: time moves only when told."""

    def __init__(self, start_ns: int = 1_700_000_000 * 10**9) -> None:
        self.t = start_ns

    def now_ns(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += round(seconds * 1e9)


@pytest.fixture
def step_clock() -> StepClock:
    return StepClock()
