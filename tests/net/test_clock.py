"""Clocks: real time and the manual clock tests drive."""
from __future__ import annotations

import asyncio
import time

import pytest

from netsim.clock import Clock, ManualClock, RealClock


def test_both_satisfy_the_protocol() -> None:
    assert isinstance(RealClock(), Clock)
    assert isinstance(ManualClock(), Clock)


async def test_real_clock_is_epoch_ns_and_sleeps() -> None:
    c = RealClock()
    assert abs(c.now_ns() - time.time_ns()) < 1_000_000_000
    t0 = time.monotonic()
    await c.sleep(0.01)
    assert time.monotonic() - t0 >= 0.009


async def test_manual_clock_wakes_sleepers_in_deadline_order() -> None:
    c = ManualClock(start_ns=1_000)
    woke: list[str] = []

    async def sleeper(name: str, s: float) -> None:
        await c.sleep(s)
        woke.append(f"{name}@{c.now_ns()}")

    tasks = [asyncio.create_task(sleeper("b", 2)), asyncio.create_task(sleeper("a", 1))]
    await asyncio.sleep(0)
    assert c.pending == 2
    c.advance(0.5)
    await asyncio.sleep(0)
    assert woke == []
    c.advance(0.5)
    await asyncio.sleep(0)
    assert woke == ["a@1000001000"]
    c.advance(5)
    await asyncio.gather(*tasks)
    assert woke == ["a@1000001000", "b@6000001000"]
    assert c.now_ns() == 6_000_001_000


async def test_manual_sleep_zero_only_yields() -> None:
    c = ManualClock()
    before = c.now_ns()
    await c.sleep(0)
    assert c.now_ns() == before


def test_manual_clock_refuses_to_go_back() -> None:
    c = ManualClock(start_ns=10)
    with pytest.raises(ValueError, match="forward"):
        c.advance(-1)
    with pytest.raises(ValueError, match="forward"):
        c.set_ns(5)
