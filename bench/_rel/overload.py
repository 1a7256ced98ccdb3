"""Overload: a switched path offered 10× what it can carry, for a minute of virtual time.

The lab (a real `Fabric` with its link tasks, on the scenario `VirtualClock`):

    vm0..vm3 (port group lan, VLAN 10) -- vs0 -- vmnic0 ==link== p1 -- phys -- sinkA (access 10,
                                                                               egress shaped)
                                                                        \\-- sinkB (access 10,
                                                                               slow reader)
    flooder (forged transmits Accept) -- vs1 (MAC table 1,024) -- two idle VMs

The path's capacity C frames/s is split between two bottlenecks of C/2 each: sinkA's egress
shaper (average C/2 × frame bits/s) and sinkB's reader, which takes C/2 frames/s off its bounded
queue. Senders offer `load × C` frames/s (half to each sink) in ticks (1 ms by default); the
flooder sends C frames/s from random source MACs (a MAC-table flood) on vs1. Measured: frames
offered and delivered, delivered rate against C and against the same lab at load 1 (the unloaded
rate), drops by reason, conservation (every offered frame delivered, queued, or counted as a
drop), the largest queue and MAC table seen, RSS growth over the last 50 s, and that a probe
frame still gets through after the flood (no deadlock); the wall time bounds the whole run.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from netsim.dataplane.policy import SecurityPolicy, ShapingPolicy, VlanPolicy
from netsim.dataplane.switch import PortGroup
from netsim.dataplane.vclock import VirtualClock
from netsim.lab.fabric import Fabric
from netsim.wire import frame as fr

MAC_A = fr.mac_to_bytes("02:00:00:00:0a:0a")
MAC_B = fr.mac_to_bytes("02:00:00:00:0b:0b")


def _rss() -> int:
    """Resident set size in bytes (Linux), 0 elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


async def _run(load: float, capacity: int, seconds: float, frame_len: int,
               mac_flood: bool, tick_ms: int) -> dict[str, Any]:
    clock = VirtualClock()
    fab = Fabric(clock=clock)
    esx = fab.add_host("esx1")
    nic = esx.add_pif("vmnic0")
    vs0 = esx.add_switch("vs0", mac_table_size=1024)
    vs0.add_port_group(PortGroup("lan", vlan=10))
    vs0.add_uplink(nic, vlan=VlanPolicy.trunk())
    vs1 = esx.add_switch("vs1", mac_table_size=1024)
    vs1.add_port_group(PortGroup("wild", vlan=0, security=SecurityPolicy(forged_transmits=True)))
    phys = fab.add_physical_switch("phys", mac_table_size=1024)
    p1 = fab.add_port(phys, "p1", VlanPolicy.trunk())
    sink_a = fab.add_port(phys, "sinkA", VlanPolicy.access(10))
    sink_b = fab.add_port(phys, "sinkB", VlanPolicy.access(10))
    half = capacity // 2
    bits = half * frame_len * 8
    tick_ns = tick_ms * 1_000_000
    per_tick = half * tick_ms / 1000  # frames one sink takes per tick (may be fractional)
    phys.set_egress_shaping(sink_a, ShapingPolicy(
        average_bps=bits, peak_bps=2 * bits,
        burst_bytes=max(2 * frame_len, int(4 * per_tick * frame_len))))
    fab.link(nic, p1)
    senders = [esx.add_vm(f"vm{i}").add_nic(vs0, "lan") for i in range(4)]
    flooder = esx.add_vm("flooder").add_nic(vs1, "wild")
    idle = [esx.add_vm(f"idle{i}").add_nic(vs1, "wild", queue_size=256) for i in range(2)]
    payload = bytes(frame_len - 14)
    streams = [[fr.ethernet(dst, s.vnic.mac, 0x0800, payload) for s in senders]
               for dst in (MAC_A, MAC_B)]
    rng = random.Random(1)
    stats: dict[str, Any] = {"offered": 0, "delivered_a": 0, "delivered_b": 0, "flood": 0,
                             "max_queue": 0, "max_mac_table": 0}
    ticks = int(seconds * 1000 // tick_ms)
    rss_at_10s = 0
    lan_ports = [*(s for s in senders), nic, p1, sink_a, sink_b]

    async def traffic() -> None:
        nonlocal rss_at_10s
        start = clock.now_ns()
        offered_total = 0.0
        flood_total = 0.0
        budget = 0.0
        for t in range(1, ticks + 1):
            offered_total += load * capacity * tick_ms / 1000
            n = int(offered_total) - stats["offered"]
            for i in range(n):
                side = (stats["offered"] + i) & 1
                senders[(i >> 1) % 4].vnic.send(streams[side][(i >> 1) % 4])
            stats["offered"] += n
            if mac_flood:
                flood_total += capacity * tick_ms / 1000
                m = int(flood_total) - stats["flood"]
                for _ in range(m):
                    src = bytes((2, 0xEE)) + rng.randbytes(4)
                    flooder.vnic.send(fr.ethernet(rng.randbytes(6)[:1] + src[1:], src,
                                                  0x0800, payload[:46]))
                stats["flood"] += m
                for p in idle:
                    p.vnic.drain()
            await clock.sleep_until(start + t * tick_ns)
            # the readers: sinkA takes all the shaper let through, sinkB only its capacity
            stats["delivered_a"] += sink_a.queue.clear()
            q = sink_b.queue
            budget += per_tick
            take = min(len(q), int(budget))
            budget -= take
            if not len(q) - take:
                budget = min(budget, 1.0)  # an idle reader does not bank capacity
            for _ in range(take):
                q.get_nowait()
            stats["delivered_b"] += take
            stats["max_queue"] = max(stats["max_queue"], len(q), len(nic.queue), len(p1.queue))
            stats["max_mac_table"] = max(stats["max_mac_table"], len(vs1.mac_table),
                                         len(phys.mac_table))
            if t == ticks // 6:  # 10 s into a minute
                rss_at_10s = _rss()

    wall = time.perf_counter()
    async with fab:
        # the sinks announce themselves so their MACs are learned along the path
        sink_a.receive(fr.ethernet(fr.BROADCAST, MAC_A, 0x0806, bytes(46)))
        sink_b.receive(fr.ethernet(fr.BROADCAST, MAC_B, 0x0806, bytes(46)))
        await fab.settle()
        for p in (*senders, sink_a, sink_b):
            p.queue.clear()
        await traffic()
        await fab.settle()
        in_flight = len(sink_a.queue) + len(sink_b.queue) + len(nic.queue) + len(p1.queue)
        drops: dict[str, int] = {}
        for p in lan_ports:
            for reason, k in p.counters.drops.items():
                drops[reason] = drops.get(reason, 0) + k
        flood_drops: dict[str, int] = {}
        for p in (flooder, *idle):
            for reason, k in p.counters.drops.items():
                flood_drops[reason] = flood_drops.get(reason, 0) + k
        # liveness after the storm: a probe still crosses the whole path
        sink_b.queue.clear()
        senders[0].vnic.send(fr.ethernet(MAC_B, senders[0].vnic.mac, 0x0800, b"probe" * 10))
        await fab.settle()
        probe_ok = False
        while (got := sink_b.queue.get_nowait()) is not None:
            probe_ok = probe_ok or b"probe" in got
    wall = time.perf_counter() - wall
    delivered = stats["delivered_a"] + stats["delivered_b"]
    return {
        "load": load, "capacity_fps": capacity, "virtual_s": seconds, "wall_s": round(wall, 2),
        "offered": stats["offered"], "delivered": delivered,
        "delivered_fps": round(delivered / seconds, 1),
        "delivered_vs_capacity": round(delivered / seconds / capacity, 3),
        "drops": dict(sorted(drops.items())), "flood_frames": stats["flood"],
        "flood_drops": dict(sorted(flood_drops.items())),
        "unaccounted": stats["offered"] - delivered - in_flight - sum(drops.values()),
        "max_queue": stats["max_queue"], "queue_limit": sink_b.queue.maxlen,
        "max_mac_table": stats["max_mac_table"], "mac_table_limit": 1024,
        "rss_growth_mib": round(max(0, _rss() - rss_at_10s) / 2**20, 1) if rss_at_10s else 0.0,
        "probe_after_storm": probe_ok,
        "offered_fps_wall": round(stats["offered"] / wall),
    }


def run_overload(*, capacity: int = 2000, seconds: float = 60.0, frame_len: int = 1000,
                 factor: float = 10.0, tick_ms: int = 1,
                 timeout_s: float = 300.0) -> dict[str, Any]:
    """The unloaded run (load 1) and the overloaded one (load `factor`), and their ratio."""

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        base = await asyncio.wait_for(_run(1.0, capacity, seconds, frame_len, False, tick_ms),
                                      timeout_s)
        over = await asyncio.wait_for(_run(factor, capacity, seconds, frame_len, True, tick_ms),
                                      timeout_s)
        return base, over

    base, over = asyncio.run(both())
    return {"unloaded": base, "overloaded": over,
            "admitted_ratio": round(over["delivered"] / max(1, base["delivered"]), 3)}
