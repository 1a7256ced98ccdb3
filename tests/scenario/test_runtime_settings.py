"""Scenario steps that change a setting mid-run: switch MTU, port MTU, port blocking, the
teaming failover order, port group blocking/MTU/teaming, CDP/LLDP mode. Each test sees the
behaviour before and after the step in the same run."""
from __future__ import annotations

from pathlib import Path

import pytest

from netsim.dataplane.vclock import VirtualClock
from netsim.errors import ScenarioError
from netsim.lab.discovery import neighbour_table
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology
from netsim.scenario.model import parse_scenario
from netsim.scenario.runner import Report, ScenarioRun

TOPO = """name: rt
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {mtu: 9000}, vmnic1: {mtu: 9000}}
    switches:
      vSwitch0:
        uplinks: [vmnic0, vmnic1]
        teaming: {policy: failover, active: [vmnic0], standby: [vmnic1]}
    port_groups:
      web: {switch: vSwitch0, vlan: 10}
    vms:
      a: {nics: [{network: web, mac: "00:50:56:00:00:0a", mtu: 9000}]}
      b: {nics: [{network: web, mac: "00:50:56:00:00:0b"}]}
physical:
  tor:
    discovery: {protocols: [cdp, lldp], mgmt: 192.0.2.2}
    ports:
      esx1.vmnic0: {mode: trunk, ifname: Gi1/0/7, mtu: 9000}
      esx1.vmnic1: {mode: trunk, ifname: Gi1/0/8, mtu: 9000}
"""
A = "00:50:56:00:00:0a"
UDP = f'{{eth: {{src: "{A}"}}, ipv4: {{src: 10.0.0.1, dst: 10.0.0.2}}, udp: {{dport: PORT}}, ' \
      'payload: SIZE}'


def frame(size: int = 20) -> str:
    """A UDP frame from `a`: to port 9 if jumbo (> 1500), else port 10."""
    return UDP.replace("SIZE", str(size)).replace("PORT", "9" if size > 1500 else "10")


async def run(tmp_path: Path, body: str) -> tuple[Report, Lab]:
    (tmp_path / "t.yaml").write_text(TOPO)
    scn = parse_scenario("topology: t.yaml\n" + body, "s.yaml", base=tmp_path)
    clock = VirtualClock()
    lab = Lab(parse_topology(TOPO, "t.yaml"), clock=clock)
    run_ = ScenarioRun(scn, lab=lab, clock=clock)
    return await run_.run(), lab


async def test_switch_mtu_step_drops_jumbo_frames_from_then_on(tmp_path: Path) -> None:
    report, _ = await run(tmp_path, f"""
steps:
  - {{at: 1ms, send: {{from: a, frame: {frame(8000)}}}}}
  - {{at: 2ms, switch: {{name: esx1/vSwitch0, mtu: 1500}}}}
  - {{at: 3ms, send: {{from: a, frame: {frame(8000)}}}}}
  - {{at: 4ms, send: {{from: a, frame: {frame(1000)}}}}}
expect:
  - arrives: {{at: esx1/vmnic0, match: "udp port 9", count: 1}}
  - arrives: {{at: esx1/vmnic0, match: "udp port 10", count: 1}}
  - counter: {{port: a.eth0, name: drops.oversize, eq: 0, at: 2500us}}
  - counter: {{port: a.eth0, name: drops.oversize, eq: 1}}
""")
    assert report.passed, report.to_json()


async def test_port_mtu_step_on_an_uplink(tmp_path: Path) -> None:
    report, _ = await run(tmp_path, f"""
steps:
  - {{at: 1ms, send: {{from: a, frame: {frame(8000)}}}}}
  - {{at: 2ms, port: {{name: esx1/vmnic0, mtu: 1500}}}}
  - {{at: 3ms, send: {{from: a, frame: {frame(8000)}}}}}
expect:
  - arrives: {{at: esx1/vmnic0, match: "udp", count: 1}}
  - counter: {{port: esx1/vmnic0, name: drops.oversize, eq: 1}}
""")
    assert report.passed, report.to_json()


async def test_port_block_and_unblock_steps(tmp_path: Path) -> None:
    report, _ = await run(tmp_path, f"""
steps:
  - {{at: 1ms, send: {{from: a, frame: {frame()}}}}}
  - {{at: 2ms, port: {{name: a.eth0, blocked: true}}}}
  - {{at: 3ms, send: {{from: a, frame: {frame()}}}}}
  - {{at: 4ms, port: {{name: a.eth0, blocked: false}}}}
  - {{at: 5ms, send: {{from: a, frame: {frame()}}}}}
expect:
  - arrives: {{at: b.eth0, match: "udp", count: 2}}
  - never: {{at: b.eth0, match: "udp", after: 2ms, within: 2ms}}
  - counter: {{port: a.eth0, name: drops.blocked, eq: 1}}
""")
    assert report.passed, report.to_json()


async def test_port_group_steps_block_cap_mtu_and_override_teaming(tmp_path: Path) -> None:
    report, _ = await run(tmp_path, f"""
steps:
  - {{at: 1ms, port_group: {{name: web, blocked: true}}}}
  - {{at: 2ms, send: {{from: a, frame: {frame()}}}}}
  - {{at: 3ms, port_group: {{name: web, blocked: false, mtu: 1500,
                            teaming: {{active: [vmnic1], standby: [vmnic0]}}}}}}
  - {{at: 4ms, send: {{from: a, frame: {frame(8000)}}}}}
  - {{at: 5ms, send: {{from: a, frame: {frame()}}}}}
expect:
  - counter: {{port: a.eth0, name: drops.blocked, eq: 1}}
  - counter: {{port: a.eth0, name: drops.oversize, eq: 1}}
  - never: {{at: esx1/vmnic0, match: "udp"}}
  - arrives: {{at: esx1/vmnic1, match: "udp", count: 1, after: 5ms}}
""")
    assert report.passed, report.to_json()


async def test_failover_order_step_moves_traffic_and_notifies_the_switches(
        tmp_path: Path) -> None:
    report, _ = await run(tmp_path, f"""
steps:
  - {{at: 1ms, send: {{from: a, frame: {frame()}}}}}
  - {{at: 2ms, switch: {{name: esx1/vSwitch0,
                        teaming: {{active: [vmnic1], standby: [vmnic0]}}}}}}
  - {{at: 3ms, send: {{from: a, frame: {frame()}}}}}
expect:
  - arrives: {{at: esx1/vmnic0, match: "udp", count: 1, within: 2ms}}
  - never: {{at: esx1/vmnic0, match: "udp", after: 2ms}}
  - arrives: {{at: esx1/vmnic1, match: "udp", count: 1, after: 2ms}}
  - arrives: {{at: esx1/vmnic1, match: "ether proto 0x8035 and ether src {A}", count: 1,
              after: 2ms, within: 1ms}}
""")
    assert report.passed, report.to_json()
    step = next(s for s in report.steps if s.get("kind") == "switch")
    assert step["notified"] == 2  # a and b moved: one RARP each


async def test_cdp_lldp_mode_steps_start_change_and_stop_advertising(tmp_path: Path) -> None:
    """Default CDP listen sends nothing; `both` advertises every 60 s; LLDP every 30 s; `none`
    stops it and the switch forgets the host once the hold time has passed."""
    report, lab = await run(tmp_path, """
duration: 400s
steps:
  - {at: 10s, switch: {name: esx1/vSwitch0, discovery: {operation: both}}}
  - {at: 150s, switch: {name: esx1/vSwitch0, discovery: {protocol: lldp}}}
  - {at: 200s, switch: {name: esx1/vSwitch0, discovery: {operation: none}}}
expect:
  - never: {at: esx1/vmnic0, match: "ether dst 01:00:0c:cc:cc:cc", within: 10s}
  - arrives: {at: esx1/vmnic0, match: "ether dst 01:00:0c:cc:cc:cc", count: 3, after: 10s,
              within: 140s}
  - arrives: {at: esx1/vmnic0, match: "ether proto 0x88cc", count: 2, after: 150s,
              within: 50s}
  - never: {at: esx1/vmnic0, match: "ether proto 0x88cc or ether dst 01:00:0c:cc:cc:cc",
            after: 200s}
""")
    assert report.passed, report.to_json()
    rows = {(r.device, r.port): r for r in neighbour_table(lab.fabric)}
    # the last CDP went out at 130 s (+180 s), the last LLDP at 180 s (+120 s): both gone
    assert rows["tor", "Gi1/0/7"].system == "", rows
    # and the host, no longer listening, forgot the switch at once
    assert rows["esx1", "vmnic0"].system == "" and rows["esx1", "vmnic0"].config == "lldp none"


async def test_cdp_mode_step_names_bad_values(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TOPO)
    with pytest.raises(ScenarioError, match=r"s\.yaml:3: steps\[0\]\.switch\.discovery\."
                                            r"operation: expected none \(down\)"):
        parse_scenario("topology: t.yaml\nsteps:\n  - {at: 1s, switch: {name: esx1/vSwitch0, "
                       "discovery: {operation: loud}}}\n", "s.yaml", base=tmp_path)
    scn = parse_scenario("topology: t.yaml\nsteps:\n  - {at: 1s, switch: {name: esx1/vSwitch0, "
                         "teaming: {active: [vmnic7]}}}\n", "s.yaml", base=tmp_path)
    clock = VirtualClock()
    with pytest.raises(ScenarioError, match=r"teaming\.active\[0\]: vmnic7 is not an uplink of "
                                            r"vSwitch0 \(uplinks: vmnic0, vmnic1\)"):
        ScenarioRun(scn, lab=Lab(parse_topology(TOPO, "t.yaml"), clock=clock), clock=clock)
