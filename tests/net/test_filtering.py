"""vDS traffic filtering and marking (DvsTrafficRuleset): qualifiers, directions, first match
wins, DSCP/CoS marks with valid checksums, per-rule counters; shaping in both directions."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from netsim.clock import ManualClock
from netsim.dataplane.filtering import (
    IpQualifier,
    MacQualifier,
    RuleMatcher,
    SystemTrafficQualifier,
    TrafficRule,
    TrafficRuleset,
    ruleset_from_doc,
    ruleset_to_doc,
    set_dscp,
)
from netsim.dataplane.policy import ShapingPolicy
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.errors import ConfigError
from netsim.wire import frame as fr

from .conftest import A, B, sent, tag_of

PEER = fr.mac_to_bytes("02:00:00:00:00:99")
A_S, PEER_S = fr.mac_to_str(A), fr.mac_to_str(PEER)


def udp(dport: int = 5060, *, src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 4000,
        tos: int = 0, dmac: str = PEER_S, smac: str = A_S) -> bytes:
    return bytes(Ether(dst=dmac, src=smac) / IP(src=src, dst=dst, tos=tos) /
                 UDP(sport=sport, dport=dport) / (b"x" * 20))


def tcp(dport: int = 22, *, src: str = "10.0.0.1", dst: str = "10.0.0.2") -> bytes:
    return bytes(Ether(dst=PEER_S, src=A_S) / IP(src=src, dst=dst) / TCP(sport=40000,
                                                                          dport=dport))


def udp6(dport: int = 53, *, src: str = "2001:db8::1", tc: int = 0) -> bytes:
    return bytes(Ether(dst=PEER_S, src=A_S) / IPv6(src=src, dst="2001:db8::2", tc=tc) /
                 UDP(sport=1000, dport=dport))


def arp() -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=A_S) /
                 ARP(hwsrc=A_S, psrc="10.0.0.1", pdst="10.0.0.2"))


def rule(seq: int = 10, action: str = "drop", *quals, **kw) -> TrafficRule:
    return TrafficRule(seq, action, qualifiers=quals, **kw)


# (qualifier, frame, guest VLAN, matches?)
QUALIFIER_CASES = [
    (IpQualifier(protocol="udp", dst_port=5060), udp(5060), 0, True),
    (IpQualifier(protocol="udp", dst_port=5060), udp(5061), 0, False),
    (IpQualifier(protocol="udp", dst_port=5060), tcp(5060), 0, False),
    (IpQualifier(protocol="tcp", dst_port="20-23"), tcp(22), 0, True),
    (IpQualifier(protocol="tcp", dst_port="!22"), tcp(22), 0, False),
    (IpQualifier(protocol="tcp", dst_port="!22"), tcp(80), 0, True),
    (IpQualifier(protocol="udp", src_port=4000), udp(), 0, True),
    (IpQualifier(src="10.0.0.0/24"), udp(), 0, True),
    (IpQualifier(src="10.0.1.0/24"), udp(), 0, False),
    (IpQualifier(src="!10.0.1.0/24"), udp(), 0, True),
    (IpQualifier(dst="10.0.0.2"), udp(), 0, True),
    (IpQualifier(src="10.0.0.0/31"), udp(), 0, True),  # prefixes not on a byte boundary
    (IpQualifier(src="10.0.0.2/31"), udp(), 0, False),
    (IpQualifier(src="10.0.16.0/20"), udp(src="10.0.31.200"), 0, True),
    (IpQualifier(src="10.0.16.0/20"), udp(src="10.0.32.1"), 0, False),
    (IpQualifier(src="0.0.0.0/0"), udp(), 0, True),
    (IpQualifier(src="2001:db8::/33"), udp6(src="2001:db8:7fff::1"), 0, True),
    (IpQualifier(src="2001:db8::/33"), udp6(src="2001:db8:8000::1"), 0, False),
    (IpQualifier(dst="10.0.0.3"), udp(), 0, False),
    (IpQualifier(src="10.0.0.0/8"), udp6(), 0, False),  # family of the address
    (IpQualifier(src="2001:db8::/32"), udp6(), 0, True),
    (IpQualifier(src="2001:db8::/32"), udp(), 0, False),
    (IpQualifier(protocol="udp", dst_port=53), udp6(53), 0, True),
    (IpQualifier(protocol="!udp"), udp(), 0, False),
    (IpQualifier(protocol="!udp"), tcp(), 0, True),
    (IpQualifier(version=6), udp(), 0, False),
    (IpQualifier(), arp(), 0, False),  # an IP qualifier never matches ARP
    (MacQualifier(protocol="arp"), arp(), 0, True),
    (MacQualifier(protocol="arp"), udp(), 0, False),
    (MacQualifier(protocol="!arp"), udp(), 0, True),
    (MacQualifier(protocol="!arp"), arp(), 0, False),
    (MacQualifier(src=A_S), udp(), 0, True),
    (MacQualifier(src="00:16:3e:00:00:00/ff:ff:ff:00:00:00"), udp(), 0, True),
    (MacQualifier(src="00:50:56:00:00:00/ff:ff:ff:00:00:00"), udp(), 0, False),
    (MacQualifier(dst="ff:ff:ff:ff:ff:ff"), arp(), 0, True),
    (MacQualifier(src="00:16:3e:00:00:00/ff:ff:ff:00:00:f0"), udp(), 0, True),  # not a prefix
    (MacQualifier(src="00:16:3e:00:00:10/ff:ff:ff:00:00:f0"), udp(), 0, False),
    (MacQualifier(src="01:00:00:00:00:00/01:00:00:00:00:00"), udp(), 0, False),  # I/G bit
    (MacQualifier(dst="01:00:00:00:00:00/01:00:00:00:00:00"), arp(), 0, True),
    (MacQualifier(dst="!ff:ff:ff:ff:ff:ff"), arp(), 0, False),
    (MacQualifier(vlan=7), udp(), 7, True),  # the guest's tag (VGT)
    (MacQualifier(vlan=7), udp(), 0, False),
    (MacQualifier(vlan="!7"), udp(), 8, True),
    (SystemTrafficQualifier("virtualMachine"), udp(), 0, True),
    (SystemTrafficQualifier("vmotion"), udp(), 0, False),  # no VMkernel ports in hvsim
    (SystemTrafficQualifier("!vmotion"), udp(), 0, True),
]


@pytest.mark.parametrize(("qual", "frame", "vid", "matches"), QUALIFIER_CASES)
def test_each_qualifier_matches_what_vsphere_says(qual, frame: bytes, vid: int,
                                                  matches: bool) -> None:
    m = RuleMatcher([rule(10, "drop", qual)])
    assert (m.match(frame, vid) is not None) is matches
    assert m.hits == [int(matches)]


def test_qualifiers_of_one_rule_must_all_match_and_the_first_rule_in_sequence_wins() -> None:
    rs = [rule(30, "accept", IpQualifier(protocol="udp")),
          rule(10, "drop", IpQualifier(protocol="udp", dst_port=5060),
               MacQualifier(src="00:50:56:00:00:01")),  # wrong MAC: never matches
          rule(20, "tag", IpQualifier(protocol="udp", dst_port=5060), dscp=46)]
    m = RuleMatcher(rs)
    assert m.match(udp(5060), 0).sequence == 20  # 10 fails its MAC qualifier
    assert m.match(udp(9), 0).sequence == 30
    assert m.counters() == {10: 0, 20: 1, 30: 1}


def test_a_truncated_or_fake_ip_frame_never_raises() -> None:
    m = RuleMatcher([rule(10, "drop", IpQualifier(protocol="udp", dst_port=53)),
                     rule(20, "drop", MacQualifier(protocol="ipv4"))])
    for f in (udp(53)[:20], udp(53)[:35], b"\x00" * 12 + b"\x08\x00" + b"\x00" * 40,
              b"\x00" * 14):
        r = m.match(f, 0)
        assert r is None or r.sequence == 20


@pytest.mark.parametrize(("tos", "dscp"), [(0, 46), (0x03, 46), (0xB8, 0), (0x01, 26)])
def test_dscp_mark_keeps_ecn_and_a_valid_ipv4_checksum(tos: int, dscp: int) -> None:
    out = set_dscp(udp(tos=tos), dscp)
    pkt = Ether(out)
    assert pkt[IP].tos == (dscp << 2) | (tos & 3)
    want = IP(bytes(pkt[IP]))
    del want.chksum
    assert pkt[IP].chksum == IP(bytes(want)).chksum  # scapy recomputes it from scratch
    assert UDP(bytes(pkt[UDP])).chksum == pkt[UDP].chksum
    recomputed = Ether(out)
    del recomputed[UDP].chksum
    assert Ether(bytes(recomputed))[UDP].chksum == pkt[UDP].chksum  # L4 checksum still valid


def test_dscp_mark_of_ipv6_sets_the_traffic_class_and_keeps_the_flow_label() -> None:
    f = bytes(Ether(dst=PEER_S, src=A_S) / IPv6(src="2001:db8::1", dst="2001:db8::2", tc=1,
                                                fl=0xABCDE) / UDP(sport=1, dport=2))
    pkt = Ether(set_dscp(f, 34))
    assert pkt[IPv6].tc == (34 << 2) | 1 and pkt[IPv6].fl == 0xABCDE
    assert set_dscp(arp(), 46) == arp()  # not IP: unchanged


# -- on the switch ---------------------------------------------------------------------------
def vss(rules: list[TrafficRule], *, vlan: int = 5):
    sw = StandardSwitch("dvs", clock=ManualClock())
    sw.add_port_group(PortGroup("pg", vlan=vlan, traffic_rules=TrafficRuleset(tuple(rules))))
    vm = sw.attach(Vif(1, 0, mac=A), "pg")
    up = sw.add_uplink(Pif("uplink1"))
    # PEER learned on the uplink (a local-experimental ethertype no rule here looks at)
    up.receive(fr.push_tag(fr.ethernet(A, PEER, 0x88B5, bytes(46)), vlan if vlan != 4095 else 7))
    sent(vm)
    vm.counters.drops.clear()
    return sw, vm, up


# (direction of the rule, frame goes in (from the VM) or out (to the VM), filtered?)
DIRECTIONS = [
    ("incomingPackets", "in", True), ("incomingPackets", "out", False),
    ("outgoingPackets", "in", False), ("outgoingPackets", "out", True),
    ("both", "in", True), ("both", "out", True),
]


@pytest.mark.parametrize(("direction", "way", "dropped"), DIRECTIONS)
def test_rule_direction_is_seen_from_the_switch(direction: str, way: str,
                                                dropped: bool) -> None:
    sw, vm, up = vss([rule(10, "drop", IpQualifier(protocol="udp"), direction=direction)])
    if way == "in":
        vm.vnic.send(udp())
        got, port = sent(up), vm
    else:
        up.receive(fr.push_tag(udp(dmac=A_S, smac=PEER_S), 5))
        got, port = sent(vm), vm
    assert len(got) == (0 if dropped else 1)
    assert port.counters.drops == ({"filtered": 1} if dropped else {})
    counts = sw.rule_counters()[vm.name]  # per direction the rule applies to
    assert {w: c[10] for w, c in counts.items()} == {
        w: int(w == way) for w in (("in", "out") if direction == "both" else
                                   ("in",) if direction == "incomingPackets" else ("out",))}


def test_tag_rule_marks_dscp_and_cos_and_the_frame_leaves_with_both() -> None:
    _, vm, up = vss([rule(10, "tag", IpQualifier(protocol="udp", dst_port=5060), dscp=46,
                          cos=5, direction="incomingPackets")])
    vm.vnic.send(udp(5060))
    vm.vnic.send(udp(80))  # no rule: unchanged
    marked, plain = sent(up)
    assert tag_of(marked) == (5, 5) and tag_of(plain) == (5, 0)
    pkt = Ether(marked)
    assert pkt[Dot1Q].prio == 5 and pkt[IP].tos >> 2 == 46
    clean = pkt.copy()
    del clean[IP].chksum, clean[UDP].chksum
    again = Ether(bytes(clean))
    assert (again[IP].chksum, again[UDP].chksum) == (pkt[IP].chksum, pkt[UDP].chksum)
    assert Ether(plain)[IP].tos == 0


def test_tag_rule_toward_the_vm_on_a_vgt_port_rewrites_the_guest_tag() -> None:
    _, vm, up = vss([rule(10, "tag", MacQualifier(vlan=7), cos=6, dscp=10,
                          direction="outgoingPackets")], vlan=4095)
    up.receive(fr.push_tag(udp(dmac=A_S, smac=PEER_S), 7, pcp=1))
    (f,) = sent(vm)
    assert tag_of(f) == (7, 6) and Ether(f)[IP].tos >> 2 == 10


def test_accept_rule_ends_evaluation_before_a_later_drop() -> None:
    _, vm, up = vss([rule(10, "accept", IpQualifier(dst="10.0.0.2")),
                     rule(20, "drop", IpQualifier())])
    vm.vnic.send(udp(dst="10.0.0.2"))
    vm.vnic.send(udp(dst="10.0.0.3"))
    assert len(sent(up)) == 1 and vm.counters.drops == {"filtered": 1}


def test_batched_sends_are_filtered_frame_by_frame() -> None:
    _, vm, up = vss([rule(10, "drop", IpQualifier(protocol="udp", dst_port=9))])
    vm.vnic.send_many([udp(9), udp(8), udp(9), udp(8)])
    assert len(sent(up)) == 2 and vm.counters.drops == {"filtered": 2}


def test_disabled_ruleset_does_nothing_and_rules_change_live() -> None:
    sw, vm, up = vss([])
    sw.update_port_group(PortGroup("pg", vlan=5, traffic_rules=TrafficRuleset(
        (rule(1, "drop", IpQualifier()),), enabled=False)))
    vm.vnic.send(udp())
    assert len(sent(up)) == 1
    sw.update_port_group(PortGroup("pg", vlan=5, traffic_rules=TrafficRuleset(
        (rule(1, "drop", IpQualifier()),))))
    vm.vnic.send(udp())
    assert sent(up) == [] and vm.counters.drops == {"filtered": 1}


# -- documents -------------------------------------------------------------------------------
def test_ruleset_document_round_trips() -> None:
    doc = [{"sequence": 20, "action": "tag", "dscp": 46, "cos": 5, "direction": "in",
            "description": "voice", "ip": {"protocol": "udp", "dst_port": "5060-5061"}},
           {"sequence": 10, "action": "drop", "mac": {"protocol": "arp", "vlan": "!4"},
            "system_traffic": "virtualMachine"}]
    rs = ruleset_from_doc(doc)
    assert [r.sequence for r in rs.rules] == [10, 20]
    assert rs.rules[1].direction.value == "incomingPackets"
    assert ruleset_from_doc(ruleset_to_doc(rs)) == rs


@pytest.mark.parametrize(("doc", "msg"), [
    ([{"action": "drop"}], r"traffic_rules\[0\]: needs `sequence:`"),
    ([{"sequence": 1, "action": "punt"}], "action 'punt' is not one of"),
    ([{"sequence": 1, "action": "tag"}], "needs dscp and/or cos"),
    ([{"sequence": 1, "action": "tag", "dscp": 64}], "dscp: 64 must be 0-63"),
    ([{"sequence": 1, "action": "drop", "cos": 3}], "only go with action tag"),
    ([{"sequence": 1, "ip": {"dst_port": 22}}], "ports need protocol"),
    ([{"sequence": 1, "ip": {"src": "10.0.0.0/8", "dst": "::1"}}], "mix IPv4 and IPv6"),
    ([{"sequence": 1, "ip": {"src": "10.0.0.300"}}], "not an IP address"),
    ([{"sequence": 1, "mac": {"src": "00:16:3e"}}], "not a MAC address"),
    ([{"sequence": 1, "mac": {"colour": 1}}], "unknown key 'colour'"),
    ([{"sequence": 1, "system_traffic": "bogus"}], "is not one of"),
    ([{"sequence": 1}, {"sequence": 1}], r"sequence number\(s\) \[1\] used twice"),
    ([{"sequence": 1, "direction": "sideways"}], "direction 'sideways'"),
    ({"enabled": "yes"}, "enabled"),
    ([{"sequence": i} for i in range(1025)], "1025 rules, more than 1024"),
])
def test_bad_rules_are_refused_naming_the_field(doc, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        ruleset_from_doc(doc)


# -- shaping in both directions -------------------------------------------------------------
def test_port_group_shapes_both_directions_independently() -> None:
    clock = ManualClock()
    sw = StandardSwitch("dvs", clock=clock)
    sw.add_port_group(PortGroup(
        "pg", vlan=5, shaping=ShapingPolicy(8_000, 8_000, 200),  # from the VM: 200 B burst
        egress_shaping=ShapingPolicy(80_000, 80_000, 1_000)))  # to the VM: 1000 B burst
    vm = sw.attach(Vif(1, 0, mac=A), "pg")
    up = sw.add_uplink(Pif("uplink1"))
    up.receive(fr.push_tag(fr.ethernet(A, PEER, 0x0800, bytes(86)), 5))  # 100 B: in burst
    assert len(sent(vm)) == 1
    for _ in range(20):
        up.receive(fr.push_tag(fr.ethernet(A, PEER, 0x0800, bytes(86)), 5))
    assert len(sent(vm)) == 9 and vm.counters.drops == {"shaped": 11}  # 900 B left in burst
    for _ in range(5):
        vm.vnic.send(fr.ethernet(PEER, A, 0x0800, bytes(86)))
    assert len(sent(up)) == 2  # 200 B burst from the VM
    clock.advance(0.1)  # 100 ms at 8 kbit/s = 100 B from the VM, 1000 B to it
    vm.vnic.send(fr.ethernet(PEER, A, 0x0800, bytes(86)))
    assert len(sent(up)) == 1
    # a VM attached after the policy was set gets it too (one port group, one policy)
    late = sw.attach(Vif(2, 0, mac=B), "pg")
    assert late.sw_egress_shaper is not None and late.sw_shaper is not None


def test_the_largest_ruleset_compiles_and_matches_its_last_rule() -> None:
    rules = [rule(i, "drop", IpQualifier(protocol="udp", dst_port=i)) for i in range(1, 1024)]
    m = RuleMatcher([*rules, rule(5000, "accept", MacQualifier(src=A_S))])
    assert m.match(udp(1023), 0).sequence == 1023
    assert m.match(udp(2000), 0).sequence == 5000
