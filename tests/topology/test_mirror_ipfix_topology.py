"""Mirroring sessions and IPFIX in topology YAML: what validation accepts and refuses (one
error naming the line), what `hvsim draw` shows, and the builder."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netsim.dataplane.flowmeter import IpfixConfig
from netsim.errors import TopologyError
from netsim.lab.draw import to_dot
from netsim.lab.topology import TopologyBuilder, load_topology, validate
from netsim.lab.yamlsrc import SourceMap

TOPO = Path(__file__).parents[2] / "topologies" / "esxi-mirror.yaml"


def test_the_example_loads_with_every_session_setting() -> None:
    topo = load_topology(TOPO)
    ms = {m.name: m for m in topo.mirrors}
    assert (ms["web-rspan"].type, ms["web-rspan"].encapsulation_vlan) == (
        "remoteMirrorSource", 999)
    e = ms["db-erspan"]
    assert (e.encapsulation, e.destination, e.source_ip, e.erspan_id, e.sampling_rate,
            e.mirrored_packet_length) == ("erspan3", "10.0.0.9", "10.0.0.250", 42, 2, 60)
    d = ms["from-rspan"]
    assert (d.vlans, d.destination, d.normal_traffic_allowed) == ((999,), "analyzer.eth0", False)
    assert topo.physical[0].rspan_vlans == (999,)
    assert topo.host("esx1").switch("dvs1").ipfix == IpfixConfig(
        "127.0.0.1", 4739, 1, 60, 15, 0, False)


def test_draw_shows_sessions_rspan_vlans_and_ipfix() -> None:
    dot = to_dot(load_topology(TOPO))
    assert "mirror web-rspan: web.eth0 RSPAN -> VLAN 999" in dot
    assert "mirror db-erspan: db.eth0 ERSPAN3 -> 10.0.0.9 (1 in 2, 60 B)" in dot
    assert "mirror from-rspan: RSPAN VLAN 999 -> analyzer.eth0 (no normal I/O)" in dot
    assert "tor\\nRSPAN VLAN 999" in dot
    assert "IPFIX -> 127.0.0.1:4739" in dot


@pytest.mark.parametrize(("key", "value", "msg"), [
    ("collector_ip", "collector.example", "collector_ip 'collector.example' is not an IP"),
    ("collector_port", 0, "collector_port 0 outside 1..65535"),
    ("active_flow_timeout", 30, "active_flow_timeout 30 outside 60..3600"),
    ("idle_flow_timeout", 5, "idle_flow_timeout 5 outside 10..600"),
    ("sampling_rate", 20000, "sampling_rate 20000 outside 0..16384"),
    ("internal_flows_only", "maybe", "internal_flows_only 'maybe' is not true or false"),
    ("collector", "x", "collector"),
])
def test_bad_ipfix_settings_name_the_line(key: str, value: object, msg: str) -> None:
    text = TOPO.read_text()
    doc = yaml.safe_load(text)
    doc["hosts"]["esx1"]["switches"]["dvs1"]["ipfix"][key] = value
    path = TOPO.parent / "bad.yaml"
    with pytest.raises(TopologyError, match=msg) as exc:
        validate(doc, SourceMap(str(path)))
    assert "ipfix" in str(exc.value)


def test_ipfix_needs_a_collector() -> None:
    doc = yaml.safe_load(TOPO.read_text())
    del doc["hosts"]["esx1"]["switches"]["dvs1"]["ipfix"]["collector_ip"]
    with pytest.raises(TopologyError, match="IPFIX needs `collector_ip:`"):
        validate(doc, SourceMap("t.yaml"))


@pytest.mark.parametrize(("session", "change", "msg"), [
    ({"type": "remoteMirrorSource", "sources": ["a.eth0"]}, {}, "needs `encapsulation_vlan:`"),
    ({"type": "remoteMirrorDest", "vlans": [999, 998], "destination": "b.eth0"}, {},
     "takes one RSPAN VLAN"),
    ({"type": "encapsulatedRemoteMirrorSource", "sources": ["a.eth0"],
      "destination": "10.0.0.2"}, {}, "needs `source_ip:`"),
    ({"sources": ["a.eth0"], "destination": "b.eth0"}, {"encapsulation_vlan": 5},
     "does not encapsulate"),
    ({"sources": ["a.eth0"], "destination": "b.eth0"}, {"erspan_id": 5},
     "`erspan_id` is for ERSPAN sessions"),
    ({"sources": ["a.eth0"], "destination": "b.eth0"}, {"uplinks": ["vmnic0"]},
     "sends to a port, not an uplink"),
])
def test_session_settings_that_do_not_fit_its_type_are_refused(
        session: dict, change: dict, msg: str) -> None:
    t = TopologyBuilder("m")
    t.add_host("esx1", type="esxi", pifs=["vmnic0"])
    t.add_switch("esx1", "dvs1", uplinks=["vmnic0"])
    t.add_port_group("esx1", "lan", switch="dvs1", vlan=10)
    t.add_vm("esx1", "a", nics=[{"network": "lan", "ip": "10.0.0.1/24"}])
    t.add_vm("esx1", "b", nics=[{"network": "lan", "ip": "10.0.0.2/24"}])
    opts = {**session, **change}
    t.doc["hosts"]["esx1"]["mirrors"] = {"s": opts}
    with pytest.raises(TopologyError, match=msg):
        t.build()


async def test_trace_shows_sessions_and_rspan_on_a_copy_of_the_lab() -> None:
    from netsim.lab.lab import Lab

    async with Lab(load_topology(TOPO)) as lab:
        mon = lab["esx2/analyzer.eth0"]
        before = mon.counters.tx_frames
        t = lab.trace("web", {"eth": {"dst": "ff:ff:ff:ff:ff:ff"}})
        text = t.render()
        assert "mirror session web-rspan: ingress copy" in text
        assert "IPFIX: metered into a flow" in text
        assert "RSPAN VLAN 999: flooded, nothing learned" in text  # the ToR
        assert "RSPAN VLAN 999: to mirror session from-rspan" in text  # esx2
        assert "analyzer.eth0" in t.delivered  # the copy, on the twin
        assert "mirror destination without normal I/O" in text  # the broadcast itself
        assert mon.counters.tx_frames == before and len(mon.queue) == 0  # the lab: untouched


def test_the_builder_makes_rspan_sessions_and_vlans() -> None:
    t = TopologyBuilder("b")
    for h in ("esx1", "esx2"):
        t.add_host(h, type="esxi", pifs=["vmnic0"]).add_switch(h, "dvs1", uplinks=["vmnic0"])
        t.add_port_group(h, "lan", switch="dvs1", vlan=10)
        t.connect(f"{h}.vmnic0", "tor")
    t.add_vm("esx1", "a", nics=[{"network": "lan", "ip": "10.0.0.1/24"}])
    t.add_vm("esx2", "mon", nics=[{"network": "lan"}])
    t.add_mirror("esx1", "src", type="remoteMirrorSource", sources=["a.eth0"],
                 encapsulation_vlan=999)
    t.add_mirror("esx2", "dst", type="remoteMirrorDest", vlans=[999], destination="mon.eth0")
    t.add_rspan_vlans("tor", [999])
    topo = t.build()
    assert [(m.name, m.type) for m in topo.mirrors] == [("src", "remoteMirrorSource"),
                                                        ("dst", "remoteMirrorDest")]
    assert topo.physical[0].rspan_vlans == (999,)
