"""Clocks for scenarios: a virtual clock that jumps to the next event, and a wall-clock pacer.

Both satisfy the `Clock` protocol of `netsim.clock` (`now_ns()`, `async sleep(seconds)`) and add
`sleep_until(t_ns)` (absolute deadlines, so a long replay does not accumulate drift) and
`settle()` (wait until every other task is blocked).

`VirtualClock` — time stands still while any task can run; when every task is blocked (on a
queue, a future, or a `sleep` of this clock), time jumps to the earliest pending `sleep` deadline
and wakes every sleeper due at that instant, in the order they went to sleep. Nothing depends on
the wall clock, so the same scenario gives the same timestamps and the same output bytes on
every run, and a simulated hour takes as long as its events need to compute.

It does not patch the event loop (unlike `looptime` and `aiotools.VirtualClock`, which replace
`loop.time()` and the selector for the whole loop): it works in any asyncio loop — the one
pytest-asyncio gives a test, or `asyncio.run` in the CLI — and only the code that is given the
clock sees virtual time. Idleness is read from the loop's ready queue (`loop._ready`, present in
CPython's loops); on a loop without it, the clock yields a fixed number of rounds instead.
Real I/O (a broker, a thread) is invisible to it: use `PacedClock` when a run waits on the outside
world.

`PacedClock` — real time: `now_ns()` is the scenario start plus the monotonic time elapsed, and
`sleep_until` wakes within a few tens of microseconds of its deadline (the loop's timer sleeps
to ~1.5 ms before the deadline, then the clock yields with `sleep(0)` until it is reached, so other
tasks keep running meanwhile).
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from collections.abc import Callable
from typing import Any

from netsim.clock import DEFAULT_START_NS  # 2026-01-01T00:00:00Z: same stamps every run

_NS = 1_000_000_000
_FALLBACK_ROUNDS = 64  # yields per idleness check on loops without a visible ready queue


def _seconds_to_ns(seconds: float) -> int:
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"sleep duration must be a finite number, not {seconds!r}")
    return max(0, round(seconds * _NS))


class VirtualClock:
    """Deterministic simulated time: jumps to the next sleeper's deadline when all tasks block.

    `start_ns` is the epoch time (ns) the clock starts at. Sleeps are integers of nanoseconds;
    sleepers due at the same instant wake in the order they called `sleep`. Several virtual clocks
    on one loop share one scheduler and advance in step (by time elapsed since their start).
    """

    def __init__(self, start_ns: int = DEFAULT_START_NS) -> None:
        self._start = int(start_ns)
        self._now = self._start
        self._jumps = 0
        self._sched: _Scheduler | None = None  # the scheduler of the loop `call_at` last ran on

    # -- Clock protocol ---------------------------------------------------------------------------
    def now_ns(self) -> int:
        """Current simulated time, ns since the Unix epoch."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of simulated time (0 or less yields once without advancing time)."""
        await self.sleep_until(self._now + _seconds_to_ns(seconds))

    # -- extras -----------------------------------------------------------------------------------
    @property
    def jumps(self) -> int:
        """How many times the clock has moved forward (a measure of event count)."""
        return self._jumps

    async def sleep_until(self, t_ns: int) -> None:
        """Wait until simulated time reaches `t_ns` (returns after one yield if already past)."""
        if t_ns <= self._now:
            await asyncio.sleep(0)
            return
        await _scheduler().wait_until(self, int(t_ns))

    async def settle(self) -> None:
        """Return once every other task is blocked, without moving time."""
        await _scheduler().wait_idle()

    def call_at(self, t_ns: int, fn: Callable[[], None]) -> TimerHandle:
        """Call `fn()` when simulated time reaches `t_ns` (at once, on the next jump, if it is
        already past), in deadline order with the sleepers. Cheaper than a task sleeping: the
        scheduler calls it itself, and while such callbacks wake no task it moves on to the
        next deadline without a round trip through the event loop (a delayed frame on an
        impaired link costs a heap push and a call). Returns a handle to `cancel()` it."""
        sched = self._sched
        if sched is None or sched._loop is not asyncio.get_running_loop():
            sched = self._sched = _scheduler()
        return sched.call_at(self, t_ns if t_ns > self._now else self._now, fn)

    def _advance_to(self, t_ns: int) -> None:
        if t_ns > self._now:
            self._now = t_ns
            self._jumps += 1

    def __repr__(self) -> str:
        return f"VirtualClock(now_ns={self._now})"


class TimerHandle:
    """A callback scheduled with `VirtualClock.call_at`; `cancel()` keeps it from running."""

    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        """Do not call it (a no-op if it already ran)."""
        self.cancelled = True

    def done(self) -> bool:
        """Futures' protocol, so the scheduler can skip a cancelled timer like a cancelled
        sleeper."""
        return self.cancelled


#: deadlines a scheduler may serve from callbacks alone before it yields to the event loop
#: anyway (real I/O and signals get their turn)
_MAX_CALLBACK_RUN = 4096


class _Scheduler:
    """One per event loop: the only task that watches for idleness, so waiters never livelock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # (ns since the clock's start, arrival seq, clock, future); seq is unique -> no ties
        self._heap: list[tuple[int, int, VirtualClock, asyncio.Future[None]]] = []
        self._idle: list[asyncio.Future[None]] = []
        self._seq = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    async def wait_until(self, clock: VirtualClock, t_ns: int) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._heap, (t_ns - clock._start, next(self._seq), clock, fut))
        self._ensure_driver()
        await fut

    def call_at(self, clock: VirtualClock, t_ns: int, fn: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(fn)
        heapq.heappush(self._heap, (t_ns - clock._start, next(self._seq), clock, handle))
        self._ensure_driver()
        return handle

    async def wait_idle(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._idle.append(fut)
        self._ensure_driver()
        await fut

    def _ensure_driver(self) -> None:
        if self._driver is None or self._driver.done():
            self._driver = self._loop.create_task(self._drive(), name="VirtualClock.scheduler")

    async def _drive(self) -> None:
        heap = self._heap
        ready: Any = getattr(self._loop, "_ready", None)
        quick = 0  # deadlines served by callbacks alone since the last yield to the loop
        while heap or self._idle:
            if quick == 0 or ready is None or ready or self._idle:
                await _until_idle(self._loop)
                quick = 0
            if self._idle:
                waiters, self._idle = self._idle, []
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
                continue
            # Drop sleepers whose task was cancelled: they must not move time.
            while heap and heap[0][3].done():
                heapq.heappop(heap)
            if not heap:
                break
            key = heap[0][0]
            woke = False
            while heap and heap[0][0] == key:
                _, _, clock, fut = heapq.heappop(heap)
                if not fut.done():
                    clock._advance_to(clock._start + key)
                    if type(fut) is TimerHandle:
                        fut.cancelled = True  # ran: done
                        try:
                            fut.fn()
                        except Exception as exc:  # a bug in the callback: report, go on
                            self._loop.call_exception_handler({
                                "message": f"VirtualClock.call_at callback {fut.fn!r} failed",
                                "exception": exc})
                    else:
                        fut.set_result(None)
                        woke = True
            # Callbacks that woke no task: the loop has nothing to run, go straight on.
            quick = quick + 1 if not woke and quick < _MAX_CALLBACK_RUN else 0


_SCHEDULERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Scheduler] = (
    weakref.WeakKeyDictionary())


def _scheduler() -> _Scheduler:
    loop = asyncio.get_running_loop()
    sched = _SCHEDULERS.get(loop)
    if sched is None:
        sched = _SCHEDULERS[loop] = _Scheduler(loop)
    return sched


async def _until_idle(loop: asyncio.AbstractEventLoop) -> None:
    """Yield until nothing but the calling task is runnable on `loop`."""
    ready: Any = getattr(loop, "_ready", None)
    if ready is None:
        for _ in range(_FALLBACK_ROUNDS):
            await asyncio.sleep(0)
        return
    await asyncio.sleep(0)
    while ready:  # noqa: ASYNC110 - polling idleness is the point
        await asyncio.sleep(0)


class PacedClock:
    """Wall-clock time for real-time replays: `now_ns()` advances with the monotonic clock.

    `start_ns` is the epoch time reported at creation (default: the current wall time), so a
    run's timestamps are in real time but never jump with NTP or DST.

    How `sleep_until` keeps to the deadline: the event loop's timer sleeps until `COARSE_NS`
    before it (epoll rounds timeouts up to whole milliseconds, so that is as close as it gets);
    then, once no other task is runnable, the clock blocks in `time.sleep` (µs-precise) until
    `SPIN_NS` before the earliest deadline any of its sleepers has, and spins the rest. Measured
    on a loaded 2-core machine, 1,000 deadlines 1 ms apart: yielding with `sleep(0)` the last
    1.5 ms gave p50 2 ms / 41% within 1 ms (a busy process gets preempted); this gives p50 22 µs
    / 94% within 1 ms (a sleeping one is woken promptly). Blocking only happens while the loop is
    idle, and never past another sleeper's deadline.
    """

    COARSE_NS = 1_100_000
    SPIN_NS = 60_000

    def __init__(self, start_ns: int | None = None) -> None:
        self._start = time.time_ns() if start_ns is None else int(start_ns)
        self._mono0 = time.perf_counter_ns()
        self._deadlines: list[tuple[int, int]] = []   # (deadline, arrival) of each sleeper
        self._seq = 0
        self._final = 0  # sleepers in their last stretch (within COARSE_NS of the deadline)

    def now_ns(self) -> int:
        """Current time, ns since the Unix epoch (monotonic since the clock was made)."""
        return self._start + (time.perf_counter_ns() - self._mono0)

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of wall-clock time, precisely (see `sleep_until`)."""
        await self.sleep_until(self.now_ns() + _seconds_to_ns(seconds))

    async def sleep_until(self, t_ns: int) -> None:
        """Wait until `now_ns()` reaches `t_ns`; other tasks run while this one waits.

        Sleepers wake in deadline order, first come first served for equal deadlines, even
        when the process was preempted past several deadlines at once (then all are due and
        each waits for the earlier ones to go first)."""
        remaining = t_ns - self.now_ns()
        self._seq += 1
        me = (t_ns, self._seq)
        heapq.heappush(self._deadlines, me)
        final = False
        try:
            if remaining <= 0:
                await asyncio.sleep(0)
            elif remaining > self.COARSE_NS:
                await asyncio.sleep((remaining - self.COARSE_NS) / _NS)
            ready: Any = getattr(asyncio.get_running_loop(), "_ready", ())
            self._final += 1
            final = True
            while (now := self.now_ns()) < t_ns or self._deadlines[0] < me:
                if now >= t_ns:             # due, but an earlier sleeper has not gone yet
                    await asyncio.sleep(0)
                    continue
                # Others first, unless the only runnable tasks are this clock's other sleepers
                # in their last stretch (each yields to the rest: spinning together would keep
                # the process busy, and a busy process is the one the OS preempts).
                if len(ready) >= self._final and now < t_ns - self.SPIN_NS:
                    await asyncio.sleep(0)
                    continue
                first = self._deadlines[0][0]
                block = first - self.SPIN_NS - now
                if block > 0:
                    time.sleep(block / _NS)  # noqa: ASYNC251 - the loop is idle, see above
                elif first < t_ns:
                    await asyncio.sleep(0)  # an earlier sleeper is due: let it go
        finally:
            if final:
                self._final -= 1
            self._deadlines.remove(me)
            heapq.heapify(self._deadlines)

    async def settle(self) -> None:
        """Return once every other task is blocked (time keeps flowing meanwhile)."""
        await _scheduler().wait_idle()

    def __repr__(self) -> str:
        return f"PacedClock(now_ns={self.now_ns()})"
