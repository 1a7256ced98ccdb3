"""`VirtualClock.call_at`: timer callbacks in deadline order with the sleepers, cancellable,
and a callback's bug reported without stopping time."""
from __future__ import annotations

import asyncio

from netsim.dataplane.vclock import PacedClock, VirtualClock


async def test_callbacks_and_sleepers_share_one_timeline() -> None:
    clock = VirtualClock()
    t0 = clock.now_ns()
    seen: list[tuple[str, int]] = []

    async def sleeper() -> None:
        await clock.sleep_until(t0 + 20)
        seen.append(("task", clock.now_ns() - t0))

    task = asyncio.create_task(sleeper())
    clock.call_at(t0 + 30, lambda: seen.append(("c30", clock.now_ns() - t0)))
    clock.call_at(t0 + 10, lambda: seen.append(("c10", clock.now_ns() - t0)))
    dropped = clock.call_at(t0 + 15, lambda: seen.append(("never", 0)))
    dropped.cancel()
    await clock.sleep_until(t0 + 40)
    await task
    assert seen == [("c10", 10), ("task", 20), ("c30", 30)]


async def test_a_chain_of_callbacks_runs_without_the_event_loop_per_deadline() -> None:
    clock = VirtualClock()
    t0 = clock.now_ns()
    n = 20_000
    fired = 0

    def tick() -> None:
        nonlocal fired
        fired += 1
        if fired < n:
            clock.call_at(t0 + fired * 1000, tick)

    clock.call_at(t0, tick)
    await clock.sleep_until(t0 + n * 1000)
    assert fired == n and clock.now_ns() == t0 + n * 1000


async def test_a_failing_callback_is_reported_and_time_goes_on() -> None:
    clock = VirtualClock()
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    t0 = clock.now_ns()

    def boom() -> None:
        raise RuntimeError("bug")

    clock.call_at(t0 + 5, boom)
    await clock.sleep_until(t0 + 10)
    assert clock.now_ns() == t0 + 10
    assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)


async def test_paced_sleepers_in_their_last_stretch_wake_in_order() -> None:
    clock = PacedClock()
    t0 = clock.now_ns()
    order: list[int] = []

    async def at(ms: float) -> None:
        await clock.sleep_until(t0 + int(ms * 1e6))
        order.append(int(ms * 10))

    await asyncio.gather(at(3.0), at(3.3), at(3.6), at(2.0))
    assert order == [20, 30, 33, 36]
    assert clock.now_ns() >= t0 + 3_600_000


async def test_paced_sleepers_all_overdue_after_a_stall_wake_in_deadline_order() -> None:
    """The process stalls (preempted, a slow callback) past every sleeper's deadline: they
    still wake in deadline order, first come first served for equal deadlines."""
    import time

    clock = PacedClock()
    t0 = clock.now_ns()
    order: list[str] = []

    async def at(ms: float, tag: str) -> None:
        await clock.sleep_until(t0 + int(ms * 1e6))
        order.append(tag)

    tasks = [asyncio.create_task(at(ms, tag))
             for ms, tag in ((0.5, "c"), (0.2, "a"), (0.5, "d"), (0.3, "b"))]
    await asyncio.sleep(0)           # every sleeper has started waiting
    time.sleep(0.01)                 # noqa: ASYNC251 - the stall under test
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "d"]
