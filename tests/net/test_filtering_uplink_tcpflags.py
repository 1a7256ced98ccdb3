"""Traffic filtering on the uplink port group (rules that meet frames entering the vDS from
the physical network and leaving to it, where the VLAN qualifier sees the VST tag on the wire)
and the IP qualifier's TCP flags (`DvsIpNetworkRuleQualifier.tcpFlags`: exact value, or
value/mask as Open vSwitch's `tcp_flags`) - table-driven."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from netsim.clock import ManualClock
from netsim.dataplane.filtering import (
    IpQualifier,
    MacQualifier,
    RuleMatcher,
    TrafficRule,
    TrafficRuleset,
    ruleset_from_doc,
    ruleset_to_doc,
)
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.errors import ConfigError
from netsim.wire import frame as fr

from .conftest import A, B, sent

PEER = fr.mac_to_bytes("02:00:00:00:00:99")
A_S, PEER_S = fr.mac_to_str(A), fr.mac_to_str(PEER)


def tcp(flags: str, *, v6: bool = False, frag: int = 0) -> bytes:
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.0.0.1",
                                                                  dst="10.0.0.2", frag=frag)
    return bytes(Ether(dst=PEER_S, src=A_S) / ip / TCP(sport=40000, dport=443, flags=flags))


def udp() -> bytes:
    return bytes(Ether(dst=PEER_S, src=A_S) / IP(src="10.0.0.1", dst="10.0.0.2") /
                 UDP(sport=1, dport=2))


# (tcp_flags, frame, matches?)
TCP_FLAG_CASES = [
    (0x02, tcp("S"), True),  # exactly SYN
    (0x02, tcp("SA"), False),  # SYN+ACK is another value
    (0x02, tcp("SEC"), False),  # SYN with ECE+CWR (RFC 3168 ECN setup) is too
    ("0x02/0x12", tcp("S"), True),  # SYN without ACK (OVS +syn-ack)
    ("0x02/0x12", tcp("SEC"), True),  # ... whatever the ECN bits
    ("0x02/0x12", tcp("SA"), False),
    ("0x04/0x04", tcp("RA"), True),  # any RST
    ("0x04/0x04", tcp("A"), False),
    ("!0x10/0x10", tcp("S"), True),  # negated: no ACK
    ("!0x10/0x10", tcp("PA"), False),
    ("0x01/0x01", tcp("FA", v6=True), True),  # IPv6 too
    (0x02, tcp("S", frag=100), False),  # a non-first fragment has no TCP header
    (0x02, udp(), False),  # not TCP
    (0x12, tcp("SA"), True),
]


@pytest.mark.parametrize(("flags", "frame", "matches"), TCP_FLAG_CASES)
def test_tcp_flags_qualifier(flags: int | str, frame: bytes, matches: bool) -> None:
    m = RuleMatcher([TrafficRule(10, "drop", qualifiers=(
        IpQualifier(protocol="tcp", tcp_flags=flags),))])
    assert (m.match(frame, 0) is not None) is matches
    assert m.match(frame[:54], 0) is None or matches  # cut before the flags: never raises


@pytest.mark.parametrize(("ip", "msg"), [
    ({"tcp_flags": 2}, "ip.tcp_flags: TCP flags need protocol tcp"),
    ({"protocol": "udp", "tcp_flags": 2}, "ip.tcp_flags: TCP flags need protocol tcp"),
    ({"protocol": "!tcp", "tcp_flags": 2}, "ip.tcp_flags: TCP flags need protocol tcp"),
    ({"protocol": "tcp", "tcp_flags": 256}, "ip.tcp_flags: 256 must be 0-255"),
    ({"protocol": "tcp", "tcp_flags": "0x13/0x02"}, "sets flags outside its mask"),
    ({"protocol": "tcp", "tcp_flags": "syn"}, "ip.tcp_flags: 'syn' is not a number"),
])
def test_bad_tcp_flags_are_refused_naming_the_field(ip: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        ruleset_from_doc([{"sequence": 1, "ip": ip}])


def test_tcp_flags_round_trip_through_the_document_and_describe() -> None:
    rs = ruleset_from_doc([{"sequence": 5, "ip": {"protocol": "tcp", "tcp_flags": "0x02/0x12"}}])
    assert ruleset_from_doc(ruleset_to_doc(rs)) == rs
    assert "tcp_flags=0x02/0x12" in rs.rules[0].describe()


# -- uplink port group -----------------------------------------------------------------------
def vds(rules: list[TrafficRule], pg_vlan: int = 10):
    sw = StandardSwitch("dvs", clock=ManualClock())
    sw.add_port_group(PortGroup("pg", vlan=pg_vlan))
    vm = sw.attach(Vif(1, 0, mac=A), "pg")
    other = sw.attach(Vif(2, 0, mac=B), "pg")
    up = sw.add_uplink(Pif("uplink1"))
    sw.uplink_rules = TrafficRuleset(tuple(rules))
    return sw, vm, other, up


def frame_to_vm(vid: int = 10) -> bytes:
    return fr.push_tag(bytes(Ether(dst=A_S, src=PEER_S) / IP(src="10.0.0.9", dst="10.0.0.1") /
                             UDP(sport=1, dport=53)), vid)


def frame_from_vm() -> bytes:
    return bytes(Ether(dst=PEER_S, src=A_S) / IP(src="10.0.0.1", dst="10.0.0.9") /
                 UDP(sport=53, dport=1))


# (rule direction, VLAN qualifier, frame way, filtered?)
UPLINK_CASES = [
    ("incomingPackets", None, "from-physical", True),
    ("incomingPackets", None, "to-physical", False),
    ("outgoingPackets", None, "to-physical", True),
    ("outgoingPackets", None, "from-physical", False),
    ("both", 10, "from-physical", True),  # the VST VLAN on the wire is visible here
    ("both", 10, "to-physical", True),
    ("both", 20, "from-physical", False),
    ("both", "!20", "to-physical", True),
]


@pytest.mark.parametrize(("direction", "vlan", "way", "filtered"), UPLINK_CASES)
def test_uplink_port_group_rules(direction: str, vlan: int | str | None, way: str,
                                 filtered: bool) -> None:
    quals = (MacQualifier(vlan=vlan),) if vlan is not None else (IpQualifier(protocol="udp"),)
    sw, vm, _other, up = vds([TrafficRule(10, "drop", direction, quals)])
    if way == "from-physical":
        up.receive(frame_to_vm())
        got = sent(vm)
    else:
        vm.vnic.send(frame_from_vm())
        got = sent(up)
    assert len(got) == (0 if filtered else 1)
    assert up.counters.drops == ({"filtered": 1} if filtered else {})
    assert vm.counters.drops == {}
    way_key = "in" if direction == "incomingPackets" else "out" if \
        direction == "outgoingPackets" else ("in" if way == "from-physical" else "out")
    assert sw.rule_counters()["uplink1"][way_key][10] == int(filtered)


def test_uplink_rules_leave_vm_to_vm_traffic_alone_and_mark_what_leaves() -> None:
    _sw, vm, other, up = vds([
        TrafficRule(10, "tag", "outgoingPackets", (IpQualifier(protocol="udp"),), dscp=46,
                    cos=5),
        TrafficRule(20, "drop", "both", ()),  # everything else on the wire
    ])
    other.vnic.send(bytes(Ether(dst=A_S, src=fr.mac_to_str(B)) / IP() / UDP()))  # learned
    assert len(sent(vm)) == 1
    sent(up)
    up.counters.drops.clear()
    vm.vnic.send(bytes(Ether(dst=fr.mac_to_str(B), src=A_S) / IP() / UDP()))
    assert len(sent(other)) == 1 and sent(up) == []  # local: never crosses the uplink
    vm.vnic.send(frame_from_vm())
    (out,) = sent(up)
    assert fr.parse(out).vid == 10 and fr.parse(out).pcp == 5
    assert IP(out[18:]).tos >> 2 == 46  # DSCP EF, behind the VST tag
    up.receive(frame_to_vm())  # no rule lets anything in: rule 20
    assert sent(vm) == [] and up.counters.drops == {"filtered": 1}


def test_uplink_rules_follow_uplinks_added_later_and_can_be_removed() -> None:
    sw, vm, _other, up = vds([TrafficRule(10, "drop", "both", ())])
    up2 = sw.add_uplink(Pif("uplink2"))
    up2.receive(frame_to_vm())
    assert sent(vm) == [] and up2.counters.drops == {"filtered": 1}
    sw.uplink_rules = None
    up.receive(frame_to_vm())
    assert len(sent(vm)) == 1
    with pytest.raises(ConfigError, match="uplink_rules must be a TrafficRuleset"):
        sw.uplink_rules = [TrafficRule(1)]  # type: ignore[assignment]
