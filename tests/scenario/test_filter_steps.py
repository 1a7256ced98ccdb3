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
