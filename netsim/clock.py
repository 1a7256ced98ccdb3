"""The one source of time: every timestamp, MAC aging, shaping and scenario delay asks a `Clock`.

`RealClock` is wall time. `ManualClock` is for tests: time moves only when the test calls
`advance()`, and sleepers wake in deadline order. (The scenario runner adds a virtual clock that
jumps to the next scheduled event; it satisfies the same protocol.)
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol, runtime_checkable

NS_PER_S = 1_000_000_000


@runtime_checkable
class Clock(Protocol):
    """What the data plane needs of time."""

    def now_ns(self) -> int:
        """Nanoseconds since the Unix epoch (capture timestamps, MAC aging, token buckets)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class RealClock:
    """Wall-clock time: `time.time_ns` and `asyncio.sleep`."""

    __slots__ = ()

    #: now_ns() -> int: nanoseconds since the Unix epoch, from the system clock. The builtin
    #: itself, not a wrapper: the switch calls it once per frame.
    now_ns = staticmethod(time.time_ns)

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep(seconds)`."""
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "RealClock()"


#: 2026-01-01T00:00:00Z, a fixed and readable start for deterministic runs.
DEFAULT_START_NS = 1_767_225_600 * NS_PER_S


class ManualClock:
    """A clock that stands still until `advance()` moves it; for tests.

    `sleep(s)` returns once the clock has been advanced by at least `s` past the call; `sleep(0)`
    just yields to the loop. `advance` wakes sleepers in deadline order (ties in call order).
    """

    def __init__(self, start_ns: int = DEFAULT_START_NS) -> None:
        if start_ns < 0:
            raise ValueError(f"start_ns must be >= 0, got {start_ns}")
        self._now = int(start_ns)
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now_ns(self) -> int:
        """The current manual time in ns since the Unix epoch."""
        return self._now

    @property
    def pending(self) -> int:
        """How many sleepers are still waiting."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced `seconds` past now."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        await self.timer(seconds)

    def timer(self, seconds: float) -> asyncio.Future[None]:
        """A future done once the clock has been advanced `seconds` (> 0) past now: a sleep
        without a task, for waiting on it and something else at once. Cancel it to forget it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self._now + round(seconds * NS_PER_S)
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        return fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has been reached."""
        if seconds < 0:
            raise ValueError(f"time only moves forward; advance({seconds})")
        self.set_ns(self._now + round(seconds * NS_PER_S))

    def next_deadline_ns(self) -> int | None:
        """The earliest deadline a sleeper still waits for, or None."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def set_ns(self, now_ns: int) -> None:
        """Jump to an absolute time (not backwards), waking sleepers that are due."""
        if now_ns < self._now:
            raise ValueError(f"time only moves forward; {now_ns} < now {self._now}")
        self._now = now_ns
        while self._sleepers and self._sleepers[0][0] <= now_ns:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def __repr__(self) -> str:
        return f"ManualClock(now_ns={self._now})"


async def sweep_by_deadline(
    clock: Clock,
    next_due_ns: Callable[[], int | None],
    sweep: Callable[[], object],
    wait_for_work: Callable[[], Awaitable[None]],
    *,
    min_gap_s: float,
) -> NoReturn:
    """Run `sweep()` when something can be due, and only then: sleep until `next_due_ns()` (at
    least `min_gap_s` after the last sweep, so a busy table is swept at a bounded rate), or,
    while nothing is pending (`next_due_ns()` is None), wait for `wait_for_work()` instead of
    waking on a period. An idle stretch of any length is then one sleep, which a virtual clock
    crosses in one jump (DESIGN.md §2: periodic tasks are scheduled by their next deadline)."""
    gap_ns = round(min_gap_s * NS_PER_S)
    while True:
        due = next_due_ns()
        if due is None:
            await wait_for_work()
            continue
        await clock.sleep(max(due - clock.now_ns(), gap_ns) / NS_PER_S)
        sweep()
