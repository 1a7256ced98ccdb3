"""Scenario steps that change traffic filtering rules (and a network's default locking) while
the lab runs: frames before the step pass, after it they are dropped or marked."""
from __future__ import annotations

from pathlib import Path

import pytest

from netsim.dataplane.vclock import VirtualClock
from netsim.errors import ScenarioError
from netsim.scenario.model import parse_scenario
from netsim.scenario.runner import run_scenario
from netsim.wire.pcapread import read_capture

from .conftest import MAC_A, two_esx

UDP_FROM_A = (f'{{eth: {{src: "{MAC_A}"}}, ipv4: {{src: 10.0.0.1, dst: 10.0.0.2}}, '
              f'udp: {{dport: 5060}}}}')


async def test_rules_set_and_cleared_at_run_time(tmp_path: Path) -> None:
    scn = parse_scenario(f"""
capture: [b.eth0]
steps:
  - {{at: 1ms, send: {{from: a, frame: {UDP_FROM_A}}}}}
  - {{at: 2ms, port_group: {{host: esx1, name: vlan10, traffic_rules: [
       {{sequence: 10, action: drop, direction: incomingPackets, ip: {{protocol: udp}}}}]}}}}
  - {{at: 3ms, send: {{from: a, frame: {UDP_FROM_A}}}}}
  - {{at: 4ms, port_group: {{host: esx1, name: vlan10, traffic_rules: [
       {{sequence: 5, action: tag, dscp: 46, ip: {{protocol: udp, dst_port: 5060}}}}]}}}}
  - {{at: 5ms, send: {{from: a, frame: {UDP_FROM_A}}}}}
  - {{at: 6ms, port_group: {{host: esx1, name: vlan10, traffic_rules: []}}}}
  - {{at: 7ms, send: {{from: a, frame: {UDP_FROM_A}}}}}
expect:
  - arrives: {{at: b.eth0, match: "udp port 5060", count: 3}}
  - counter: {{port: a.eth0, name: "drops.filtered", eq: 1}}
""", "t.yaml", base=tmp_path)
    fab = two_esx(VirtualClock())
    report = await run_scenario(scn, fabric=fab, out_dir=tmp_path / "out")
    assert report.passed, report.to_json()
    assert fab["esx1/vSwitch0"].port_groups["vlan10"].traffic_rules is None
    got = [f for _, f, _ in read_capture(tmp_path / "out" / "b.eth0.pcapng")]
    assert [f[15] >> 2 for f in got] == [0, 46, 0]  # DSCP of each delivered frame


def test_a_bad_rule_in_a_step_names_the_line() -> None:
    with pytest.raises(ScenarioError, match=r"t.yaml:3: .*traffic_rules\[0\]: .*needs `sequence"):
        parse_scenario("""
steps:
  - {at: 1ms, port_group: {name: vlan10, traffic_rules: [{action: drop}]}}
""", "t.yaml")


XEN = """name: locks
hosts:
  xen1:
    type: xen
    pifs: {eth0: {}}
    switches:
      xenbr0: {uplinks: [eth0]}
    networks:
      Pool: {switch: xenbr0}
    vms:
      vm1: {vifs: [{network: Pool, ip: 10.0.0.5/24, mac: "00:16:3e:00:00:05"}]}
      vm2: {vifs: [{network: Pool, ip: 10.0.0.6/24, mac: "00:16:3e:00:00:06"}]}
"""
FROM_VM1 = ('{eth: {src: "00:16:3e:00:00:05", dst: "00:16:3e:00:00:06"}, '
            'ipv4: {src: SRC, dst: 10.0.0.6}, udp: {dport: 9}, payload: 958}')


async def test_vif_step_locks_and_rate_limits_a_vif_at_run_time(tmp_path: Path) -> None:
    from netsim.lab.lab import Lab
    from netsim.lab.topology import parse_topology

    spoofed, own = FROM_VM1.replace("SRC", "10.0.0.99"), FROM_VM1.replace("SRC", "10.0.0.5")
    scn = parse_scenario(f"""
steps:
  - {{at: 1ms, send: {{from: vm1, frame: {spoofed}}}}}
  - {{at: 2ms, vif: {{port: vif1.0, locking_mode: locked, ipv4_allowed: [10.0.0.5]}}}}
  - {{at: 3ms, send: {{from: vm1, frame: {spoofed}}}}}
  - {{at: 4ms, send: {{from: vm1, frame: {own}}}}}
  - {{at: 5ms, vif: {{port: vif1.0, qos_algorithm_type: ratelimit,
                      qos_algorithm_params: {{kbps: 10}}}}}}
  - {{at: 6ms, send: {{from: vm1, count: 20, frame: {own}}}}}
  - {{at: 7ms, vif: {{port: vif1.0, qos_algorithm_type: ""}}}}
  - {{at: 8ms, send: {{from: vm1, count: 20, frame: {own}}}}}
expect:
  - counter: {{port: vif1.0, name: "drops.vif-locked", eq: 1}}
  - arrives: {{at: vif2.0, match: "udp", count: 2, within: 5ms}}
""", "t.yaml", base=tmp_path)
    lab = Lab(parse_topology(XEN), clock=VirtualClock())
    report = await run_scenario(scn, fabric=lab.fabric, out_dir=tmp_path / "out")
    assert report.passed, report.to_json()
    # 10 KiB/s with a 1522-byte credit (one 50 ms interval is 512 B): one 1000-byte frame
    # goes, the other 19 of the burst are over the limit; with the limit gone, all 20 pass
    assert report.counters["xen1/vif1.0"]["drops"] == {"vif-locked": 1, "vif-qos": 19}
    assert report.counters["xen1/vif2.0"]["tx_frames"] == 1 + 1 + 1 + 20


def test_vif_step_needs_a_change_and_names_bad_values() -> None:
    with pytest.raises(ScenarioError, match=r"t.yaml:3: steps\[0\].vif: change something"):
        parse_scenario("steps:\n  - at: 1ms\n    vif: {port: vif1.0}\n", "t.yaml")
    with pytest.raises(ScenarioError, match=r"t.yaml:3: .*vif.locking_mode: 'sealed'"):
        parse_scenario("steps:\n  - at: 1ms\n    vif: {port: vif1.0, locking_mode: sealed}\n",
                       "t.yaml")
