"""Traffic filtering on a vDS uplink port group from a topology file: the model, one clear
error where it does not belong, `hvsim draw`'s label, a running lab where a rule on the uplink
port group stops what VM port rules cannot see (a VST VLAN on the wire), and `hvsim trace`
naming the uplink port group's rule."""
from __future__ import annotations

import pytest

from netsim.errors import TopologyError
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology

LAB = """\
name: uplink-rules
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches:
      dvs:
        uplinks: [vmnic0]
        %s
    port_groups:
      web: {switch: dvs, vlan: 10}
      db: {switch: dvs, vlan: 20}
    vms:
      web1: {nics: [{network: web, ip: 10.10.0.11/24}]}
      db1: {nics: [{network: db, ip: 10.20.0.11/24}]}
  esx2:
    type: esxi
    pifs: {vmnic0: {}}
    switches:
      dvs: {uplinks: [vmnic0]}
    port_groups:
      web: {switch: dvs, vlan: 10}
      db: {switch: dvs, vlan: 20}
    vms:
      web2: {nics: [{network: web, ip: 10.10.0.12/24}]}
      db2: {nics: [{network: db, ip: 10.20.0.12/24}]}
physical:
  core:
    ports: {esx1.vmnic0: {mode: trunk}, esx2.vmnic0: {mode: trunk}}
"""
RULES = """uplink_traffic_rules:
          - {sequence: 10, action: drop, direction: outgoingPackets, mac: {vlan: 20},
             description: no db off-host}"""


def test_the_model_and_the_drawing() -> None:
    topo = parse_topology(LAB % RULES, "t.yaml")
    rs = topo.host("esx1").switch("dvs").uplink_traffic_rules
    assert rs is not None and [r.sequence for r in rs.rules] == [10]
    assert topo.host("esx2").switch("dvs").uplink_traffic_rules is None
    from netsim.lab.draw import to_dot

    assert "uplink port group: 1 traffic rule (drop)" in to_dot(topo)


@pytest.mark.parametrize(("text", "message"), [
    (LAB % "uplink_traffic_rules: [{sequence: 1, ip: {protocol: udp, dst_port: 99999}}]",
     "t.yaml:9: hosts.esx1.switches.dvs.uplink_traffic_rules[0]: ip.dst_port: 99999"),
    (LAB % "uplink_traffic_rules: [{action: drop}]",
     "t.yaml:9: hosts.esx1.switches.dvs.uplink_traffic_rules[0]: needs `sequence:`"),
    ("hosts:\n  xen1:\n    type: xen\n    pifs: {eth0: {}}\n    switches:\n      xenbr0:\n"
     "        uplinks: [eth0]\n        uplink_traffic_rules: []\n",
     "t.yaml:8: hosts.xen1.switches.xenbr0.uplink_traffic_rules: uplink_traffic_rules is a "
     "vSphere distributed switch setting"),
])
def test_bad_uplink_rules_give_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "t.yaml")
    assert str(info.value).startswith(message), str(info.value)


async def test_a_vlan_kept_off_the_wire_by_the_uplink_port_group() -> None:
    async with Lab(parse_topology(LAB % RULES, "t.yaml")) as lab:
        assert (await lab.ping("web1", "web2")).replied  # VLAN 10 crosses the uplink
        assert not (await lab.ping("db1", "db2")).replied  # VLAN 20 never leaves esx1
        up = lab.fabric["esx1/vmnic0"]
        assert up.counters.drops.get("filtered", 0) >= 1
        assert lab.fabric["esx1/dvs"].rule_counters()["vmnic0"]["out"][10] >= 1
    # `hvsim trace` names the uplink port group's rule at the hop that drops
    lab = Lab(parse_topology(LAB % RULES, "t.yaml"))
    t = lab.trace("db1", {"eth": {"dst": "02:00:00:00:00:99"},
                          "ipv4": {"src": "10.20.0.11", "dst": "10.20.0.12"}, "udp": {}})
    assert [(d.port, d.reason) for d in t.drops] == [("esx1/vmnic0", "filtered")], t.render()
    assert "uplink port group traffic rule 10 'no db off-host': drop" in t.drops[0].cause
    assert "traffic rule matched: vmnic0 (to the network): rule 10" in t.render()
