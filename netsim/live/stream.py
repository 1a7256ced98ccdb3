"""Live capture streams: the frames crossing some ports of a running lab, as a pcapng byte
stream (one Interface Description Block per port, an Enhanced Packet Block per frame with its
direction), for `hvsim capture -w -`, the extcap adapter and `GET /api/capture/PORT.pcapng`.

A slow reader never slows the lab. Each stream has a bounded buffer (`limit` records); a frame
that finds it full is not buffered and is counted as dropped for its interface. While a buffer
stays full the stream takes its taps off the ports (a stalled consumer then costs the data plane
nothing) and, when there is room again, counts what it missed from the ports' own counters
(frames received + transmitted + refused by a full queue: what the taps would have seen). The
drops are reported in the stream itself: an Interface Statistics Block per interface with
`isb_ifrecv` and `isb_ifdrop`, every `stats_every_s` while something changed, and at the end.
"""
from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from netsim.dataplane.port import Port
from netsim.live.pcapng import interface_description, interface_statistics, section_header
from netsim.wire.filters import Filter

DEFAULT_LIMIT = 4096

# EPB: type, total length, interface id, ts high, ts low, captured length, original length;
# trailer: epb_flags option, end of options, total length again (as netsim.wire.capture).
_EPB_HEAD = struct.Struct("<IIIIIII")
_EPB_TAIL = struct.Struct("<HHIII")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def _seen(port: Port) -> int:
    c = port.counters
    return c.rx_frames + c.tx_frames + c.drops.get("queue-full", 0)


class CaptureStream:
    """A live pcapng stream of `ports` (pairs of port and interface name); see the module
    docstring. `start()` taps the ports, `close()` untaps them and ends `chunks()`."""

    def __init__(
        self,
        ports: Sequence[tuple[Port, str]],
        *,
        clock: Any,
        limit: int = DEFAULT_LIMIT,
        flt: Filter | None = None,
        stats_every_s: float = 1.0,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.ports = list(ports)
        self.clock = clock
        self.limit = limit
        self.flt = flt
        self.stats_every_ns = int(stats_every_s * 1e9)
        self.buffer: deque[tuple[int, int, bytes, bool]] = deque()
        self.written = [0] * len(self.ports)  # records handed to the reader
        self.dropped = [0] * len(self.ports)  # frames the reader missed
        self._taps: list[Callable[[bytes, bool], None]] = []
        self._detached_at: list[int | None] = [None] * len(self.ports)
        self._waiter: asyncio.Future[None] | None = None
        self._start_ns = 0
        self._reported: tuple[int, ...] = ()
        self.closed = False
        self.started = False

    # -- wiring ------------------------------------------------------------------------------
    def header(self) -> bytes:
        """SHB and one IDB per port: the first bytes of the stream."""
        return section_header() + b"".join(
            interface_description(name, description=port.path) for port, name in self.ports)

    def start(self) -> CaptureStream:
        """Tap the ports (returns self)."""
        if self.started:
            return self
        self.started = True
        self._start_ns = self.clock.now_ns()
        for i, (port, _) in enumerate(self.ports):
            tap = self._make_tap(i)
            self._taps.append(tap)
            port.add_tap(tap)
        return self

    def close(self) -> None:
        """Untap the ports and end the stream after what is buffered (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for i, (port, _) in enumerate(self.ports):
            self._catch_up(i)
            port.remove_tap(self._taps[i])
        self._wake()

    @property
    def received(self) -> list[int]:
        """Frames seen per interface (handed to the reader, buffered, or dropped)."""
        pending = [0] * len(self.ports)
        for item in self.buffer:
            pending[item[0]] += 1
        return [w + p + d for w, p, d in zip(self.written, pending, self.dropped, strict=True)]

    @property
    def total_dropped(self) -> int:
        """Frames not delivered to the reader, over all interfaces."""
        return sum(self.dropped)

    # -- the data-plane side -----------------------------------------------------------------
    def _make_tap(self, if_id: int) -> Callable[[bytes, bool], None]:
        # The data plane's side does as little as it can: a timestamp and a tuple into the
        # buffer; the reader packs the blocks (`take`).
        now = self.clock.now_ns
        buf = self.buffer
        append = buf.append
        limit = self.limit
        flt = self.flt
        dropped = self.dropped

        def record(frame: bytes, outbound: bool) -> None:
            if flt is not None and not flt(frame):
                return
            if len(buf) >= limit:
                dropped[if_id] += 1
                self._stall(if_id)
                return
            append((if_id, now(), frame, outbound))
            if self._waiter is not None:
                self._wake()

        return record

    def _stall(self, if_id: int) -> None:
        # Full: take the tap off (later, not while the port iterates its taps) and count what
        # passes meanwhile from the port's counters. Without a filter only: with one, the
        # counters cannot tell which frames would have matched, so the tap stays and counts.
        if self.flt is not None or self._detached_at[if_id] is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # frames sent from outside the loop: keep tapping and counting
            return
        port = self.ports[if_id][0]
        self._detached_at[if_id] = -1  # scheduled

        def detach() -> None:
            if self.closed or self._detached_at[if_id] != -1:
                return
            if len(self.buffer) < self.limit:  # drained meanwhile
                self._detached_at[if_id] = None
                return
            port.remove_tap(self._taps[if_id])
            self._detached_at[if_id] = _seen(port)

        loop.call_soon(detach)

    def _catch_up(self, if_id: int) -> None:
        mark = self._detached_at[if_id]
        if mark is None:
            return
        self._detached_at[if_id] = None
        if mark < 0:
            return
        port = self.ports[if_id][0]
        self.dropped[if_id] += _seen(port) - mark
        if not self.closed:
            port.add_tap(self._taps[if_id])

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    # -- the reader's side -------------------------------------------------------------------
    def statistics(self) -> bytes:
        """An ISB per interface with what was received and dropped so far."""
        now = self.clock.now_ns()
        received = self.received
        return b"".join(interface_statistics(i, now, received=received[i],
                                             dropped=self.dropped[i], start_ns=self._start_ns)
                        for i in range(len(self.ports)))

    def take(self, max_records: int = 1024) -> bytes:
        """Up to `max_records` buffered records as EPBs, removed from the buffer."""
        buf = self.buffer
        k = min(len(buf), max_records)
        head = _EPB_HEAD.pack
        tail = _EPB_TAIL.pack
        written = self.written
        parts: list[bytes] = []
        add = parts.append
        pop = buf.popleft
        for _ in range(k):
            if_id, ts, frame, outbound = pop()
            n = len(frame)
            pad = _PAD[n & 3]
            total = 44 + n + len(pad)
            add(head(6, total, if_id, ts >> 32, ts & 0xFFFFFFFF, n, n))
            add(frame)
            add(pad + tail(2, 4, 2 if outbound else 1, 0, total))
            written[if_id] += 1
        out = b"".join(parts)
        if k:
            for i, mark in enumerate(self._detached_at):
                if mark is not None and len(buf) < self.limit // 2:
                    self._catch_up(i)
        return out

    async def wait(self, within: float | None = None) -> None:
        """Wait until a record is buffered or the stream closed (or `within` s passed)."""
        if self.buffer or self.closed:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiter = fut
        try:
            await asyncio.wait_for(asyncio.shield(fut), within)
        except TimeoutError:
            pass
        finally:
            if self._waiter is fut:
                self._waiter = None

    async def chunks(self, *, max_records: int = 1024) -> AsyncIterator[bytes]:
        """The whole stream: header, then records as they come (statistics blocks while drops
        change), then final statistics once closed."""
        yield self.header()
        loop = asyncio.get_running_loop()
        next_stats = loop.time() + self.stats_every_ns / 1e9
        while True:
            await self.wait(within=self.stats_every_ns / 1e9)
            data = self.take(max_records)
            if data:
                yield data
            if loop.time() >= next_stats:
                next_stats = loop.time() + self.stats_every_ns / 1e9
                state = (*self.written, *self.dropped)
                if state != self._reported and any(self.dropped):
                    self._reported = state
                    yield self.statistics()
            if self.closed and not self.buffer:
                yield self.statistics()
                return
