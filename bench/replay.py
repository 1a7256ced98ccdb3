"""Benchmark: replaying a capture through the fabric, as fast as possible and in real time.

Fast mode: a 100k-frame pcap (64-byte UDP frames between two VMs, generated here) replayed into
VM `a` on esx1; each frame crosses two switches — esx1's vSwitch, the cable, esx2's vSwitch —
to VM `b`, on the virtual clock. Target (issue 6): >= 100k frames/s, end to end, through the
scenario runner (read, inject, switch twice, deliver, count, evaluate the expectation).

Baselines in the same process: reading the same pcap with our reader and with
`dpkt.pcap.Reader` (a floor for "replay" that does no switching at all), and injecting the
already-read frames straight into the fabric without the runner (the switching cost alone).

Real-time mode: frames 1 ms apart replayed on the wall clock (`PacedClock`); the figure is the
distribution of each frame's injection time minus its original offset. Target: within 1 ms.
"""
from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import dpkt
from rich.console import Console
from rich.table import Table

from netsim.dataplane.switch import PortGroup
from netsim.dataplane.vclock import PacedClock, VirtualClock
from netsim.lab.fabric import Fabric
from netsim.scenario.model import parse_scenario
from netsim.scenario.runner import ScenarioRun
from netsim.wire.framespec import build_frame
from netsim.wire.pcapread import read_capture

MAC_A, MAC_B = "00:50:56:00:00:0a", "00:50:56:00:00:0b"


def two_switch_path(clock: Any) -> Fabric:
    """esx1 and esx2, their vmnic0s cabled back to back; VM a on esx1, VM b on esx2, VLAN 10."""
    fab = Fabric(clock=clock)
    for h in ("esx1", "esx2"):
        host = fab.add_host(h)
        sw = host.add_switch("vSwitch0")
        sw.add_port_group(PortGroup("pg10", vlan=10))
        sw.add_uplink(host.add_pif("vmnic0"))
    fab.link("esx1/vmnic0", "esx2/vmnic0")
    fab["esx1"].add_vm("a").add_nic("vSwitch0", "pg10", mac=MAC_A)
    fab["esx2"].add_vm("b").add_nic("vSwitch0", "pg10", mac=MAC_B)
    return fab


def write_pcap(path: Path, n: int, gap_s: float) -> None:
    """`n` UDP frames a -> b (8 flows), `gap_s` apart, nanosecond pcap."""
    frames = [build_frame({"eth": {"src": MAC_A, "dst": MAC_B},
                           "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2"},
                           "udp": {"sport": 5000 + i, "dport": 9}}) for i in range(8)]
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, nano=True)
        for i in range(n):
            w.writepkt(frames[i % 8], ts=1_700_000_000 + i * gap_s)


def _scenario(pcap: Path, n: int, speed: str) -> str:
    learn = f"{{eth: {{src: '{MAC_B}', dst: '{MAC_A}'}}}}"  # b speaks first: a -> b is known
    return (f"name: bench-{speed}\nsteps:\n"
            f"  - {{at: 1ms, send: {{from: b, frame: {learn}}}}}\n"
            f"  - {{at: 2ms, replay: {{pcap: '{pcap}', into: a, speed: {speed}}}}}\n"
            f"expect:\n  - arrives: {{at: b, match: 'udp dst port 9', count: {n}}}\n")


async def _run(text: str, clock: Any, realtime: bool) -> Any:
    fab = two_switch_path(clock)
    run = ScenarioRun(parse_scenario(text, "bench.yaml"), fabric=fab, clock=clock,
                      realtime=realtime)
    return await run.run()


async def _inject_only(frames: list[bytes]) -> float:
    clock = VirtualClock()
    fab = two_switch_path(clock)
    got = 0

    def count(_frame: bytes) -> None:
        nonlocal got
        got += 1

    fab.on_receive("b", count)
    async with fab:
        fab["b"].vnic.send(build_frame({"eth": {"src": MAC_B, "dst": MAC_A}}))
        await clock.settle()
        receive = fab["esx1/a.eth0"].receive
        t0 = time.perf_counter()
        for i, f in enumerate(frames, 1):
            receive(f)
            if i % 256 == 0:
                await asyncio.sleep(0)
        await clock.settle()
        dt = time.perf_counter() - t0
    assert got == len(frames), (got, len(frames))
    return dt


def _pct(values: list[int], p: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def run(*, quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; print a table; return the figures."""
    n = 20_000 if quick else 100_000
    n_rt = 300 if quick else 2_000
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "bench.pcap"
        write_pcap(pcap, n, 10e-6)
        gc.collect()
        t0 = time.perf_counter()
        frames = [f for _, f, _ in read_capture(pcap)]
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with open(pcap, "rb") as fh:
            dpkt_n = sum(1 for _ in dpkt.pcap.Reader(fh))
        dpkt_s = time.perf_counter() - t0
        assert dpkt_n == n
        gc.collect()
        inject_s = asyncio.run(_inject_only(frames))
        gc.collect()
        t0 = time.perf_counter()
        report = asyncio.run(_run(_scenario(pcap, n, "max"), VirtualClock(), False))
        fast_s = time.perf_counter() - t0
        assert report.passed, report.to_json()
        t0 = time.perf_counter()
        report_v = asyncio.run(_run(_scenario(pcap, n, "original"), VirtualClock(), False))
        virt_s = time.perf_counter() - t0
        assert report_v.passed, report_v.to_json()

        rt_pcap = Path(tmp) / "rt.pcap"
        write_pcap(rt_pcap, n_rt, 1e-3)
        clock = PacedClock()
        t0 = time.perf_counter()
        report_rt = asyncio.run(_run(_scenario(rt_pcap, n_rt, "original"), clock, True))
        rt_s = time.perf_counter() - t0
        assert report_rt.passed, report_rt.to_json()
        rt = report_rt.realtime or {}

    fast = n / fast_s
    out: dict[str, Any] = {
        "frames": n,
        "fast_frames_per_s": round(fast),
        "fast_target_met": fast >= 100_000,
        "virtual_original_timing_frames_per_s": round(n / virt_s),
        "virtual_original_timing_sim_s": n * 10e-6,
        "baseline_read_ours_frames_per_s": round(n / read_s),
        "baseline_read_dpkt_frames_per_s": round(n / dpkt_s),
        "baseline_inject_only_frames_per_s": round(n / inject_s),
        "ratio_fast_to_inject_only": round(inject_s / fast_s, 3),
        "ratio_read_ours_to_dpkt": round(dpkt_s / read_s, 2),
        "realtime_frames": rt.get("frames", 0),
        "realtime_wall_s": round(rt_s, 3),
        "realtime_offset_us_p50": rt.get("offset_ns_p50", 0) / 1e3,
        "realtime_offset_us_p90": rt.get("offset_ns_p90", 0) / 1e3,
        "realtime_offset_us_p99": rt.get("offset_ns_p99", 0) / 1e3,
        "realtime_offset_us_max": rt.get("offset_ns_max", 0) / 1e3,
        "realtime_within_1ms": rt.get("within_1ms", 0.0),
    }
    table = Table(title=f"replay: {n:,} frames through two switches")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("vs baseline", justify="right")
    table.add_row("fast replay via runner (frames/s)", f"{fast:,.0f}",
                  f"{out['ratio_fast_to_inject_only']:.2f}x of inject-only; target 100,000")
    table.add_row("virtual time, original timing (frames/s)",
                  f"{out['virtual_original_timing_frames_per_s']:,}",
                  f"{n * 10e-6:.1f} s simulated")
    table.add_row("baseline: inject read frames, no runner", f"{n / inject_s:,.0f}", "")
    table.add_row("baseline: read pcap, ours", f"{n / read_s:,.0f}",
                  f"{out['ratio_read_ours_to_dpkt']:.1f}x dpkt")
    table.add_row("baseline: read pcap, dpkt.pcap.Reader", f"{n / dpkt_s:,.0f}", "1.0x")
    table.add_row(f"real time: {out['realtime_frames']} frames 1 ms apart, offset p50",
                  f"{out['realtime_offset_us_p50']:.0f} µs", "")
    table.add_row("real time: offset p90 / p99 / max",
                  f"{out['realtime_offset_us_p90']:.0f} / {out['realtime_offset_us_p99']:.0f} / "
                  f"{out['realtime_offset_us_max']:.0f} µs", "")
    table.add_row("real time: frames within 1 ms", f"{out['realtime_within_1ms']:.1%}",
                  "target 100%")
    Console().print(table)
    return out
