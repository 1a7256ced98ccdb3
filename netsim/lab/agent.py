"""A guest's stack set to work: frames in from its vNICs, answers out, pings with timeouts.

`GuestAgent` wraps a `Guest` (the pure stack) with a way to send on each vNIC and a clock for
timeouts. Frames reach it through `deliver(ifindex, frame)` (a vNIC's receive callback); what
the stack answers goes straight back out. `ping` sends echo requests and waits on the clock for
the reply. While the next hop is unresolved the ARP request is re-sent as Linux does: every
`ARP_RETRANS_S` (net.ipv4.neigh.*.retrans_time_ms = 1000), at most `ARP_SOLICIT` requests in all
(mcast_solicit = 3) — so `ping -W1` to a host that never answers sends one ARP request.
"""
from __future__ import annotations

import asyncio
import inspect
import ipaddress
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from netsim.dataplane.guest import Guest, Received, Tx

SendFn = Callable[[bytes], Any]

#: Linux's neighbour defaults (ip-sysctl.rst, net.ipv4.neigh.default): an unanswered ARP
#: request is repeated every retrans_time_ms = 1000 ms, mcast_solicit = 3 requests in all.
ARP_RETRANS_S = 1.0
ARP_SOLICIT = 3


@dataclass(frozen=True)
class PingResult:
    """One echo request's fate: replied after `rtt_s` seconds of the clock, or lost."""

    src: str
    dst: ipaddress.IPv4Address
    seq: int
    replied: bool
    rtt_s: float | None = None
    ttl: int | None = None


class GuestAgent:
    """Runs one VM's `Guest` on a clock, sending through one function per vNIC."""

    def __init__(self, guest: Guest, senders: Sequence[SendFn], clock: Any, *,
                 ident: int = 1) -> None:
        if len(senders) != len(guest.ifaces):
            raise ValueError(f"{guest.name}: {len(guest.ifaces)} interfaces but "
                             f"{len(senders)} senders")
        self.guest = guest
        self.senders = list(senders)
        self.clock = clock
        self.received: deque[Received] = deque(maxlen=4096)
        self._waiting: dict[tuple[int, int], asyncio.Future[Received]] = {}
        self._ident = ident & 0xFFFF  # ICMP echo identifier of this guest's pings
        self._seq = 0
        self._pending_sends: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        """The VM's name."""
        return self.guest.name

    def deliver(self, ifindex: int, frame: bytes) -> None:
        """A frame arrived on vNIC `ifindex`: let the stack answer, and settle waiting pings."""
        guest = self.guest
        guest.reading = True
        try:
            txs = guest.receive(ifindex, frame)
            if txs:
                self._send(txs)
        finally:
            guest.reading = False
        if guest.inbox:
            self._settle()

    def deliver_batch(self, ifindex: int, frames: Sequence[bytes]) -> None:
        """Frames arrived on vNIC `ifindex`, oldest first: `deliver` for each, in order (each
        frame's answers are sent before the next frame is read)."""
        receive = self.guest.receive_batch
        inbox = self.guest.inbox
        start = 0
        self.guest.reading = True  # frames taken off the queue wait here: see VmPort.set_reader
        try:
            while start < len(frames):
                txs, start = receive(ifindex, frames, start)
                if txs:
                    self._send(txs)
                if inbox:
                    self._settle()
        finally:
            self.guest.reading = False

    def _settle(self) -> None:
        """Hand what the stack received to the pings waiting for it (the rest to `received`)."""
        inbox = self.guest.inbox
        while inbox:
            item = inbox.popleft()
            if item.kind == "echo-reply":
                fut = self._waiting.pop((item.ident, item.seq), None)
                if fut is not None and not fut.done():
                    fut.set_result(item)
                    continue
            self.received.append(item)

    def _send(self, txs: list[Tx]) -> None:
        for ifindex, frame in txs:
            result = self.senders[ifindex](frame)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._pending_sends.add(task)
                task.add_done_callback(self._pending_sends.discard)

    def send_udp(self, dst: ipaddress.IPv4Address | str, sport: int, dport: int,
                 payload: bytes) -> None:
        """Send one UDP datagram."""
        self._send(self.guest.send_udp(dst, sport, dport, payload))

    async def _sleep_or(self, fut: asyncio.Future[Any], seconds: float) -> bool:
        """Wait until `fut` is done or `seconds` of the clock pass; True if `fut` is done."""
        if fut.done():
            return True
        timer = getattr(self.clock, "timer", None)
        if timer is not None and seconds > 0:
            # A clock that hands out timer futures (ManualClock): one wake-up future and two
            # callbacks instead of a sleeper task and asyncio.wait — this runs once per ping.
            t = timer(seconds)
            woken = asyncio.get_running_loop().create_future()

            def wake(_: asyncio.Future[Any]) -> None:
                if not woken.done():
                    woken.set_result(None)

            fut.add_done_callback(wake)
            t.add_done_callback(wake)
            try:
                await woken
            finally:
                fut.remove_done_callback(wake)
                t.cancel()
            return fut.done()
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait({fut, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()  # a cancelled, unawaited task logs nothing
        return fut.done()

    async def ping(self, dst: ipaddress.IPv4Address | str, *, wait_s: float = 1.0,
                   payload: bytes = b"hvsim-ping-payload") -> PingResult:
        """Send one ICMP echo request to `dst`; wait up to `wait_s` clock seconds for a reply."""
        dst = ipaddress.IPv4Address(dst)
        seq, rtt, ttl = await self.ping_fields(dst, wait_s=wait_s, payload=payload)
        if rtt is None:
            return PingResult(self.name, dst, seq, False)
        return PingResult(self.name, dst, seq, True, rtt, ttl)

    async def ping_fields(self, dst: ipaddress.IPv4Address, *, wait_s: float = 1.0,
                          payload: bytes = b"hvsim-ping-payload"
                          ) -> tuple[int, float | None, int | None]:
        """`ping` without the result object: (ICMP sequence number, round-trip time in clock
        seconds or None if unanswered, the reply's TTL or None)."""
        self._seq = (self._seq + 1) & 0xFFFF
        key = (self._ident, self._seq)
        fut: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        start = self.clock.now_ns()
        try:
            if self.guest.route(dst) is None:  # nothing can be sent, nothing can come back
                self.guest.counters["no-route"] += 1
                return key[1], None, None
            # (an empty list is fine: the packet waits behind an ARP request already out)
            self._send(self.guest.ping(dst, ident=key[0], seq=key[1], payload=payload))
            # Wait, re-sending the ARP request at each retransmit time that falls inside the
            # wait (Linux's neighbour timer; one request in all when wait_s <= 1 s).
            waited = 0.0
            sent = 1
            while True:
                step = min(ARP_RETRANS_S, wait_s - waited)
                if await self._sleep_or(fut, step):
                    break
                waited += step
                if waited >= wait_s - 1e-9:
                    break
                if sent < ARP_SOLICIT:
                    sent += 1
                    self._send(self.guest.retry_arp(dst))
            if fut.done():
                return key[1], (self.clock.now_ns() - start) / 1e9, fut.result().ttl
            # Unresolved: the neighbour fails (Linux drops its queue after the last probe), so
            # the next ping to it sends a new ARP request at once.
            self.guest.give_up(dst)
            return key[1], None, None
        finally:
            self._waiting.pop(key, None)
