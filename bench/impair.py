"""Benchmark: link impairment (netem-like) on the fabric's clock.

1. Throughput of one impaired hop against the same hop unimpaired, same run: a saturating flow
   (bursts of 256 frames every virtual millisecond) from VM `a` on esx1 to VM `b` on esx2,
   through esx1's vSwitch, the esx1/vmnic0 cable and esx2's vSwitch. Impaired: the cable's
   esx1 -> esx2 direction has delay 20 ms, jitter 5 ms, loss 1 %. Target: >= 0.5x unimpaired.
2. A virtual hour of a 1,000 frames/s stream through a 20 ms +- 5 ms, 1 % loss link: the link
   alone (the impaired direction on the virtual clock, frames made and consumed by clock
   callbacks): target < 15 s wall. For scale, the same stream through the whole two-switch path
   (a sending task, both vSwitches, the guest's receive task) for a virtual minute, and the
   hour that rate gives.
3. Real time: the same link on the wall clock (`PacedClock`), 1,000 frames/s for 2 s; how late
   each frame is released against its due time. Target: p99 within 1 ms on an idle machine.
"""
from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.replay import MAC_A, MAC_B, two_switch_path
from netsim.dataplane.impair import ImpairedPath, Impairment, RandomLoss
from netsim.dataplane.port import PortCounters
from netsim.dataplane.vclock import PacedClock, VirtualClock
from netsim.wire.framespec import build_frame

MS = 1_000_000
LINK = Impairment(delay_ns=20 * MS, jitter_ns=5 * MS, loss=RandomLoss(0.01))


def _frame(i: int = 0) -> bytes:
    return build_frame({"eth": {"src": MAC_A, "dst": MAC_B},
                        "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2"},
                        "udp": {"sport": 5000 + i, "dport": 9}})


async def _hop(n: int, imp: Impairment | None) -> tuple[float, float, int]:
    """Wall and CPU seconds to push `n` frames a -> b in 256-frame bursts 1 virtual ms apart
    (CPU time too: on a shared machine the wall clock also counts other processes)."""
    clock = VirtualClock()
    fab = two_switch_path(clock)
    if imp is not None:
        fab.impair("esx1/vmnic0", imp, direction="out")
    got = 0

    def count(frames: list[bytes]) -> None:
        nonlocal got
        got += len(frames)

    b = fab["b"].vnic

    async def sink() -> None:
        while True:
            count(await b.recv_batch())

    fab.spawn(sink(), name="sink")
    fab.on_receive("a", lambda f: None)
    frames = [_frame(i) for i in range(8)] * 32
    async with fab:
        b.send(build_frame({"eth": {"src": MAC_B, "dst": MAC_A}}))
        await clock.sleep(0.001)
        send_many = fab["a"].vnic.send_many
        t0, c0 = time.perf_counter(), time.process_time()
        start = clock.now_ns()
        for k in range(n // 256):
            await clock.sleep_until(start + k * MS)
            send_many(frames)
        await clock.sleep(0.1)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, cpu, got


async def _link_hour(seconds: int, fps: int) -> tuple[float, float, ImpairedPath]:
    """The impaired link alone: a stream made by clock callbacks, consumed by a callback."""
    clock = VirtualClock()
    counters = PortCounters()
    delivered = 0

    def sink(frames: list[bytes]) -> None:
        nonlocal delivered
        delivered += len(frames)

    path = ImpairedPath("bench", LINK, seed=1, clock=clock, deliver=sink, counters=counters)
    frame = _frame()
    gap = 1_000_000_000 // fps
    total = seconds * fps
    sent = 0
    start = clock.now_ns()
    done = asyncio.get_running_loop().create_future()

    def send() -> None:
        nonlocal sent
        path.offer(frame)
        sent += 1
        if sent < total:
            clock.call_at(start + sent * gap, send)
        elif not done.done():
            done.set_result(None)

    t0, c0 = time.perf_counter(), time.process_time()
    clock.call_at(start, send)
    await done
    await clock.sleep(1)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert delivered + path.stats.lost == total, (delivered, path.stats.lost, total)
    assert counters.drops.get("impair-loss", 0) == path.stats.lost
    return dt, cpu, path


async def _fabric_stream(seconds: int, fps: int) -> tuple[float, int]:
    """The same stream through the two-switch path, sent by a task on the virtual clock."""
    clock = VirtualClock()
    fab = two_switch_path(clock)
    fab.impair("esx1/vmnic0", LINK, direction="out")
    got = 0

    def count(_f: bytes) -> None:
        nonlocal got
        got += 1

    fab.on_receive("b", count)
    fab.on_receive("a", lambda f: None)
    frame = _frame()
    gap = 1_000_000_000 // fps
    async with fab:
        fab["b"].vnic.send(build_frame({"eth": {"src": MAC_B, "dst": MAC_A}}))
        await clock.sleep(0.001)
        send = fab["a"].vnic.send
        start = clock.now_ns()
        t0 = time.perf_counter()
        for i in range(seconds * fps):
            await clock.sleep_until(start + i * gap)
            send(frame)
        await clock.sleep(1)
        dt = time.perf_counter() - t0
    return dt, got


async def _realtime(seconds: float, fps: int) -> list[int]:
    clock = PacedClock()
    counters = PortCounters()
    path = ImpairedPath("rt", Impairment(delay_ns=5 * MS, jitter_ns=2 * MS), seed=1,
                        clock=clock, deliver=lambda frames: None, counters=counters)
    path.lateness = []
    frame = _frame()
    gap = 1_000_000_000 // fps
    start = clock.now_ns()
    for i in range(int(seconds * fps)):
        await clock.sleep_until(start + i * gap)
        path.offer(frame)
    await clock.sleep(0.05)
    return path.lateness


def _pct(values: list[int], p: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] if s else 0


def run(*, quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; print a table; return the figures."""
    n = 51_200 if quick else 256_000
    hour = 360 if quick else 3600
    fabric_s = 10 if quick else 60
    gc.collect()
    plain_s, plain_cpu, plain_got = asyncio.run(_hop(n, None))
    gc.collect()
    imp_s, imp_cpu, imp_got = asyncio.run(_hop(n, Impairment(
        delay_ns=20 * MS, jitter_ns=5 * MS, loss=RandomLoss(0.01), limit=1_000_000)))
    assert plain_got == n, plain_got
    assert 0.97 * n < imp_got < n, imp_got
    gc.collect()
    link_s, link_cpu, path = asyncio.run(_link_hour(hour, 1000))
    gc.collect()
    fab_s, fab_got = asyncio.run(_fabric_stream(fabric_s, 1000))
    gc.collect()
    late = asyncio.run(_realtime(0.5 if quick else 2.0, 1000))
    plain_fps, imp_fps = n / plain_s, imp_got / imp_s
    ratio = imp_fps / plain_fps
    cpu_ratio = (imp_got / imp_cpu) / (n / plain_cpu)
    hour_equiv = link_s * 3600 / hour
    out: dict[str, Any] = {
        "hop_frames": n,
        "hop_unimpaired_frames_per_s": round(plain_fps),
        "hop_impaired_frames_per_s": round(imp_fps),
        "hop_ratio_impaired_to_unimpaired": round(ratio, 3),
        "hop_ratio_cpu_time": round(cpu_ratio, 3),
        "hop_target_met": ratio >= 0.5,
        "link_virtual_s": hour,
        "link_frames": hour * 1000,
        "link_lost": path.stats.lost,
        "link_wall_s": round(link_s, 3),
        "link_wall_s_per_virtual_hour": round(hour_equiv, 2),
        "link_cpu_s_per_virtual_hour": round(link_cpu * 3600 / hour, 2),
        "link_target_met": hour_equiv < 15,
        "fabric_stream_virtual_s": fabric_s,
        "fabric_stream_frames_delivered": fab_got,
        "fabric_stream_wall_s": round(fab_s, 3),
        "fabric_stream_wall_s_per_virtual_hour": round(fab_s * 3600 / fabric_s, 1),
        "realtime_frames": len(late),
        "realtime_late_us_p50": _pct(late, 0.5) / 1e3,
        "realtime_late_us_p99": _pct(late, 0.99) / 1e3,
        "realtime_late_us_max": max(late, default=0) / 1e3,
        "realtime_within_1ms": sum(1 for x in late if x <= MS) / len(late) if late else 0.0,
    }
    table = Table(title="impair: netem-like links on the fabric clock")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("vs baseline / target", justify="right")
    table.add_row("hop unimpaired (frames/s)", f"{plain_fps:,.0f}", "1.00x")
    table.add_row("hop delay 20ms jitter 5ms loss 1% (frames/s)", f"{imp_fps:,.0f}",
                  f"{ratio:.2f}x ({cpu_ratio:.2f}x in CPU time); target >= 0.5x")
    table.add_row(f"link alone: {hour:,} virtual s at 1,000 frames/s (wall)", f"{link_s:.2f} s",
                  f"{hour_equiv:.1f} s per virtual hour ({link_cpu * 3600 / hour:.1f} s CPU); "
                  "target < 15 s")
    table.add_row(f"two-switch path: {fabric_s} virtual s at 1,000 frames/s (wall)",
                  f"{fab_s:.2f} s", f"{fab_s * 3600 / fabric_s:.0f} s per virtual hour")
    table.add_row(f"real time: {len(late)} frames, release late p50 / p99 / max",
                  f"{out['realtime_late_us_p50']:.0f} / {out['realtime_late_us_p99']:.0f} / "
                  f"{out['realtime_late_us_max']:.0f} µs",
                  f"{out['realtime_within_1ms']:.1%} within 1 ms")
    Console().print(table)
    return out
