"""Guest agents: pings with clock timeouts over a wire, lost pings reported as lost."""
from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from netsim.dataplane.guest import Guest, Iface
from netsim.dataplane.vclock import VirtualClock
from netsim.lab.agent import GuestAgent


class WallClock:
    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def two_agents(*, cut: bool = False) -> tuple[GuestAgent, GuestAgent]:
    clock = WallClock()
    a = Guest("a", [Iface("00:16:3e:00:00:01", ipaddress.IPv4Interface("10.0.0.1/24"))])
    b = Guest("b", [Iface("00:16:3e:00:00:02", ipaddress.IPv4Interface("10.0.0.2/24"))])
    loop = asyncio.get_running_loop()
    agents: dict[str, GuestAgent] = {}

    def to(name: str):
        def send(frame: bytes) -> None:
            if not cut:
                loop.call_soon(agents[name].deliver, 0, frame)
        return send

    agents["a"] = GuestAgent(a, [to("b")], clock)
    agents["b"] = GuestAgent(b, [to("a")], clock)
    return agents["a"], agents["b"]


async def test_ping_over_a_wire_replies() -> None:
    a, _ = two_agents()
    first = await a.ping("10.0.0.2", wait_s=1.0)
    second = await a.ping("10.0.0.2", wait_s=1.0)
    assert first.replied and second.replied and second.seq == first.seq + 1
    assert second.ttl == 64 and 0 <= second.rtt_s < 1.0


async def test_ping_on_a_cut_wire_is_lost_after_the_wait() -> None:
    a, _ = two_agents(cut=True)
    t0 = time.monotonic()
    result = await a.ping("10.0.0.2", wait_s=0.1)
    assert not result.replied and result.rtt_s is None
    assert 0.09 < time.monotonic() - t0 < 1.0
    # Linux `ping -W0.1`: one ARP request; the neighbour timer (retrans_time 1 s) has not
    # fired when ping gives up
    assert a.guest.counters["tx-arp-request"] == 1


@pytest.mark.parametrize(("wait_s", "requests"), [(1.0, 1), (1.5, 2), (2.5, 3), (6.0, 3)])
async def test_an_unanswered_arp_is_repeated_every_second_three_times_at_most(
        wait_s: float, requests: int) -> None:
    # net.ipv4.neigh.default.retrans_time_ms = 1000 and mcast_solicit = 3 (ip-sysctl.rst):
    # requests at 0, 1 and 2 s while the ping waits, then no more; the ping still waits its
    # whole -W.
    clock = VirtualClock()
    g = Guest("a", [Iface("00:16:3e:00:00:01", ipaddress.IPv4Interface("10.0.0.1/24"))])
    sent: list[tuple[int, bytes]] = []
    a = GuestAgent(g, [lambda f: sent.append((clock.now_ns(), f))], clock)
    t0 = clock.now_ns()
    result = await a.ping("10.0.0.2", wait_s=wait_s)
    assert not result.replied
    assert clock.now_ns() - t0 == round(wait_s * 1e9)
    assert [(t - t0) // 1_000_000_000 for t, _ in sent] == list(range(requests))
    assert all(f[12:14] == b"\x08\x06" and f[38:42] == bytes([10, 0, 0, 2]) for _, f in sent)
    assert g.counters["tx-arp-request"] == requests
    # the neighbour failed: its queued echo request is dropped (counted) and the next ping
    # starts a new resolution with an ARP request at once
    assert g.counters["arp-unresolved-drop"] == 1
    sent.clear()
    await a.ping("10.0.0.2", wait_s=0.5)
    assert len(sent) == 1 and sent[0][1][12:14] == b"\x08\x06"


async def test_ping_without_a_route_returns_at_once() -> None:
    a, _ = two_agents()
    result = await a.ping("192.168.1.1", wait_s=5.0)
    assert not result.replied
    assert a.guest.counters["no-route"] == 1


async def test_udp_lands_in_received() -> None:
    a, b = two_agents()
    await a.ping("10.0.0.2", wait_s=1.0)  # resolve ARP first
    a.send_udp("10.0.0.2", 1234, 9, b"x")
    await asyncio.sleep(0.01)
    assert [(r.kind, r.payload) for r in b.received] == [("udp", b"x")]
