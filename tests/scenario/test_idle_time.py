"""Idle virtual time costs nothing: MAC aging (and the vDS remote table's aging) sleep until an
entry can expire, never on a fixed period, so a scenario step a million hours out, or a capture
whose clock jumps by years, runs in one jump (issue: 1,206 s of CPU for a 3-frame pcap)."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

from netsim.clock import ManualClock
from netsim.dataplane.switch import PortGroup
from netsim.dataplane.vclock import VirtualClock
from netsim.lab.fabric import Fabric
from netsim.scenario.model import parse_scenario
from netsim.scenario.runner import run_scenario
from netsim.wire.framespec import build_frame
from netsim.wire.pcapread import read_capture

from .conftest import MAC_A, MAC_B, two_esx, write_pcap_ns

BCAST_FROM_A = f'{{eth: {{src: "{MAC_A}"}}, payload: 20}}'
TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
# a guard so that a regression fails in a minute instead of hanging for hours
GUARD_S = 60


async def _cpu(coro) -> tuple[object, float]:
    t0 = time.process_time()
    result = await asyncio.wait_for(coro, GUARD_S)
    return result, time.process_time() - t0


async def test_a_step_a_million_hours_out_takes_under_a_second(tmp_path: Path) -> None:
    scn = parse_scenario(f"""
steps:
  - {{at: 0, send: {{from: a, frame: {BCAST_FROM_A}}}}}
  - {{at: 1e6h, send: {{from: a, frame: {BCAST_FROM_A}}}}}
expect:
  - arrives: {{at: b.eth0, match: "ether src {MAC_A}", count: 2}}
  - arrives: {{at: b.eth0, match: "ether src {MAC_A}", after: 999999h, count: 1}}
""", "t.yaml", base=tmp_path)
    report, cpu = await _cpu(run_scenario(scn, fabric=two_esx(VirtualClock()),
                                          out_dir=tmp_path / "out"))
    assert report.passed, report.to_json()
    assert report.duration_ns >= 10**6 * 3600 * 10**9
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for an idle million hours"


async def test_a_capture_whose_clock_jumps_years_replays_at_once(tmp_path: Path) -> None:
    # 3 frames: one in 2000, two in 2024 (as in a capture whose clock was set mid-way)
    t2000 = int(dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()) * 10**9
    t2024 = int(dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp()) * 10**9
    frame = build_frame({"eth": {"src": MAC_A, "dst": MAC_B}, "payload": 20})
    write_pcap_ns(tmp_path / "jump.pcap", [(t2000, frame), (t2024, frame),
                                          (t2024 + 10**6, frame)])
    scn = parse_scenario(f"""
capture: [b.eth0]
steps:
  - {{at: 0, replay: {{pcap: jump.pcap, into: a, speed: original}}}}
expect:
  - arrives: {{at: b.eth0, match: "ether src {MAC_A}", count: 3}}
""", "t.yaml", base=tmp_path)
    report, cpu = await _cpu(run_scenario(scn, fabric=two_esx(VirtualClock()),
                                          out_dir=tmp_path / "out"))
    assert report.passed, report.to_json()
    got = [t for t, _, _ in read_capture(tmp_path / "out" / "b.eth0.pcapng")]
    assert [t - got[0] for t in got] == [0, t2024 - t2000, t2024 - t2000 + 10**6]
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for a 3-frame capture"


async def test_aging_sleeps_until_the_oldest_entry_expires_and_not_when_empty() -> None:
    clock = ManualClock()
    fab = Fabric(clock=clock)
    sw = fab.add_host("esx1").add_switch("vs", aging_s=60)
    sw.add_port_group(PortGroup("pg"))
    port = fab["esx1"].add_vm("vm").add_nic(sw, "pg")
    async with fab:
        for _ in range(5):
            await asyncio.sleep(0)
        assert clock.pending == 0  # empty table: no timer at all, however long the idle time
        port.vnic.send(b"\xff" * 6 + port.vnic.mac + b"\x08\x00" + bytes(46))
        for _ in range(5):
            await asyncio.sleep(0)
        # one timer, due when the entry can age out (60 s and a nanosecond after it was seen)
        assert clock.next_deadline_ns() == clock.now_ns() + 60 * 10**9 + 1
        clock.advance(61)
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(sw.mac_table) == 0 and sw.mac_table.expirations == 1
        assert clock.pending == 0  # empty again: back to waiting for an entry


async def test_a_lab_run_for_a_million_hours_on_the_manual_clock_is_one_jump() -> None:
    # `hvsim run --duration` drives a ManualClock in steps while the fabric is quiet; with no
    # deadline near, it jumps to the next one instead of stepping 0.1 s at a time
    from netsim.lab.lab import Lab
    from netsim.lab.topology import load_topology

    clock = ManualClock()
    lab = Lab(load_topology(TOPOLOGIES / "xen-vlans.yaml"), clock=clock)
    async with lab:
        await lab.pingall()  # MAC tables hold entries: their aging is pending
        t0 = clock.now_ns()
        _, cpu = await _cpu(lab.run_for(1e6 * 3600))
        assert clock.now_ns() - t0 >= 1e6 * 3600 * 10**9
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for an idle million hours"
