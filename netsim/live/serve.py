"""Keep a lab running and served (`hvsim serve`, `hvsim run --live`): the lab, its live server,
optional traffic, until Ctrl-C / SIGTERM or a duration.

Time: real time by default; `virtual` with a speed runs the lab's clock N times faster than the
wall clock (`ScaledClock`), so `--speed 10x` shows ten lab seconds per second.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netsim.clock import NS_PER_S, RealClock
from netsim.errors import ConfigError
from netsim.live.drops import DropCapture
from netsim.live.server import DEFAULT_PORT, LiveServer, is_loopback, new_token


class ScaledClock:
    """Lab time that runs `speed` times as fast as the wall clock (monotonic, starting at the
    current wall time); `sleep(s)` waits s/speed real seconds."""

    def __init__(self, speed: float, start_ns: int | None = None) -> None:
        if not speed > 0:
            raise ConfigError(f"speed must be > 0, not {speed!r}")
        self.speed = float(speed)
        self._start = time.time_ns() if start_ns is None else int(start_ns)
        self._mono0 = time.perf_counter_ns()

    def now_ns(self) -> int:
        """Lab time in ns since the Unix epoch."""
        return self._start + int((time.perf_counter_ns() - self._mono0) * self.speed)

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of lab time."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def sleep_until(self, deadline_ns: int) -> None:
        """Wait until lab time `deadline_ns`."""
        await self.sleep((deadline_ns - self.now_ns()) / NS_PER_S)

    def __repr__(self) -> str:
        return f"ScaledClock({self.speed:g}x)"


def parse_speed(text: str) -> float:
    """`10x`, `10`, `0.5x` -> the factor."""
    t = text.strip().lower().removesuffix("x")
    try:
        v = float(t)
    except ValueError as exc:
        raise ConfigError(f"--speed {text!r}: want a factor like 10x") from exc
    if not 0 < v <= 10_000:
        raise ConfigError(f"--speed {text!r}: must be between 0 and 10000")
    return v


def make_clock(kind: str, speed: str) -> Any:
    """The clock of a served lab: `real` (wall time, speed 1x) or `virtual` at `speed`."""
    factor = parse_speed(speed)
    if kind == "real":
        if factor != 1:
            raise ConfigError("--speed needs --clock virtual (real time runs at 1x)")
        return RealClock()
    if kind == "virtual":
        return ScaledClock(factor)
    raise ConfigError(f"--clock must be real or virtual, not {kind!r}")


async def serve_lab(
    lab: Any,
    *,
    name: str,
    bind: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    traffic: str = "pingall",
    interval_s: float = 1.0,
    duration_s: float | None = None,
    drops_to: Path | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Run `lab` and serve it until a signal (or `duration_s` of lab time)."""
    if traffic not in ("pingall", "none"):
        raise ConfigError(f"--traffic must be pingall or none, not {traffic!r}")
    if token is None and not is_loopback(bind):
        token = new_token()
    drops = DropCapture(lab.fabric, drops_to).start() if drops_to is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        async with lab, LiveServer(lab.fabric, lab=lab, name=name, bind=bind, port=port,
                                   token=token) as server:
            say(f"serving lab {name} on {server.url}/ (clock {lab.clock!r}); Ctrl-C stops")
            if token is not None:
                say(f"token: {token}   open {server.url}/?token={token}")
            sys.stdout.flush()
            tasks = []
            if traffic == "pingall":
                tasks.append(asyncio.create_task(_pingall_forever(lab, interval_s, server)))
            if duration_s is not None:
                tasks.append(asyncio.create_task(_after(lab, duration_s, stop)))
            waiter = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                for t in tasks:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            finally:
                for t in (waiter, *tasks):
                    t.cancel()
                await asyncio.gather(waiter, *tasks, return_exceptions=True)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if drops is not None:
            drops.close()
            say(f"wrote {drops_to}: {drops.summary()}")


async def _pingall_forever(lab: Any, interval_s: float, server: LiveServer) -> None:
    rounds = 0
    last = -1
    while True:
        r = await lab.pingall(wait_s=min(1.0, max(interval_s, 0.05)))
        rounds += 1
        if r.answered != last:  # a change in reachability is news; the same again is not
            last = r.answered
            server.event("traffic", f"pingall round {rounds}: {r.answered}/{r.pairs} answered")
        await lab.clock.sleep(interval_s)


async def _after(lab: Any, seconds: float, stop: asyncio.Event) -> None:
    await lab.clock.sleep(seconds)
    stop.set()
