"""Every VLAN mode × frame kind: what is accepted into which VLAN, what leaves tagged, what drops.

Semantics: DESIGN.md §3 (OVS vswitch.xml port VLAN modes; vSphere port group VLAN IDs). The
stacked-tag cases (priority tags over an inner tag, 802.1ad and 0x9100 outer tags) are the ones
tests/interop/test_vlan_ovs.py checks against a real Open vSwitch.
"""
from __future__ import annotations

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.policy import VlanPolicy as V
from netsim.dataplane.port import Pif, Port, Vif
from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch

from .conftest import BCAST, A, B, make, sent, tag_of

UNTAGGED = ("untagged", None, 0)
PRIO = ("priority-tagged (VID 0, PCP 3)", 0, 3)
T5 = ("tagged 5", 5, 0)
T7 = ("tagged 7", 7, 0)
T10 = ("tagged 10", 10, 0)
T4095 = ("tagged 4095", 4095, 0)

# (ingress mode, frame kind, expected): expected is the (vid, pcp) tag seen on a trunk-all probe
# port (None = left untagged, i.e. VLAN 0 with PCP 0), or a drop reason string.
INGRESS = [
    (V.access(5), UNTAGGED, (5, 0)),
    (V.access(5), PRIO, (5, 3)),
    (V.access(5), T5, "tagged-on-access"),
    (V.access(5), T7, "tagged-on-access"),
    (V.access(0), UNTAGGED, None),
    (V.access(0), T5, "tagged-on-access"),
    (V.trunk(), UNTAGGED, None),
    (V.trunk(), PRIO, (0, 3)),
    (V.trunk(), T5, (5, 0)),
    (V.trunk(), T4095, "vlan-not-allowed"),
    (V.trunk(5, 65), UNTAGGED, "vlan-not-allowed"),
    (V.trunk(5, 65), PRIO, "vlan-not-allowed"),
    (V.trunk(5, 65), T5, (5, 0)),
    (V.trunk(5, 65), T7, "vlan-not-allowed"),
    (V.trunk(0, 5), UNTAGGED, None),
    (V.native_tagged(10, 5), UNTAGGED, (10, 0)),
    (V.native_tagged(10, 5), PRIO, (10, 3)),
    (V.native_tagged(10, 5), T5, (5, 0)),
    (V.native_tagged(10, 5), T10, (10, 0)),
    (V.native_tagged(10, 5), T7, "vlan-not-allowed"),
    (V.native_tagged(10), T7, (7, 0)),
    (V.native_untagged(10, 5), UNTAGGED, (10, 0)),
    (V.native_untagged(10, 5), T5, (5, 0)),
    (V.native_untagged(10, 5), T7, "vlan-not-allowed"),
    (V.native_untagged(10, 5), T4095, "vlan-not-allowed"),
]


def _ids(case: tuple) -> str:
    return f"{case[0].describe()}|{case[1][0]}"


@pytest.mark.parametrize(("mode", "kind", "expected"), INGRESS, ids=[_ids(c) for c in INGRESS])
def test_ingress_classification(mode: V, kind: tuple, expected: object) -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    port_in = sw.add_port("in", mode)
    probe = sw.add_port("probe", V.trunk())
    _, vid, pcp = kind
    port_in.receive(make(BCAST, A, vid=vid, pcp=pcp))
    got = sent(probe)
    if isinstance(expected, str):
        assert got == []
        assert port_in.counters.drops == {expected: 1}
    else:
        assert len(got) == 1
        assert tag_of(got[0]) == expected
        assert port_in.counters.drops == {}


# (egress mode, ingress frame (vid, pcp) on a trunk-all port, expected tag on egress or "none")
EGRESS = [
    (V.access(5), (5, 3), None),
    (V.access(0), (None, 0), None),
    (V.access(5), (6, 0), "none"),
    (V.trunk(), (5, 3), (5, 3)),
    (V.trunk(), (None, 0), None),
    (V.trunk(), (0, 3), (0, 3)),
    (V.trunk(5), (65, 0), "none"),
    (V.trunk(5), (None, 0), "none"),
    (V.native_untagged(10), (10, 0), None),
    (V.native_untagged(10), (5, 2), (5, 2)),
    (V.native_untagged(10), (None, 0), "none"),  # OVS: a native port never trunks VLAN 0
    (V.native_tagged(10), (10, 0), (10, 0)),
    (V.native_tagged(10), (None, 0), "none"),
    (V.native_tagged(0), (None, 0), None),  # VLAN 0 with PCP 0 never carries a tag
    (V.native_tagged(10, 5), (5, 0), (5, 0)),
    (V.native_tagged(10, 5), (65, 0), "none"),
]


@pytest.mark.parametrize(("mode", "inframe", "expected"), EGRESS,
                         ids=[f"{c[0].describe()}|in{c[1]}" for c in EGRESS])
def test_egress_encoding(mode: V, inframe: tuple, expected: object) -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    src = sw.add_port("src", V.trunk())
    out = sw.add_port("out", mode)
    vid, pcp = inframe
    src.receive(make(BCAST, A, vid=vid, pcp=pcp))
    got = sent(out)
    if expected == "none":
        assert got == []
        assert src.counters.drops == {"no-destination": 1}
    else:
        assert len(got) == 1
        assert tag_of(got[0]) == expected
        assert len(got[0]) == 60 + (4 if expected else 0)


def test_vid0_pcp0_leaves_a_trunk_untagged_even_if_it_arrived_priority_tagged() -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    src = sw.add_port("src", V.trunk())
    out = sw.add_port("out", V.trunk())
    src.receive(make(BCAST, A, vid=0, pcp=0))
    (f,) = sent(out)
    assert tag_of(f) is None and f == make(BCAST, A)


# vSphere port groups: (port group VLAN ID, direction, frame vid, expected at the other side)
# "vm→up": a guest sends; we look at the uplink (trunk). "up→vm": the uplink receives; we look
# at the VM's vNIC.
PG = [
    (0, "vm→up", None, None),
    (0, "vm→up", 5, "tagged-on-access"),
    (0, "up→vm", None, None),
    (0, "up→vm", 5, "none"),
    (5, "vm→up", None, (5, 0)),
    (5, "vm→up", 5, "tagged-on-access"),
    (5, "up→vm", 5, None),
    (5, "up→vm", 65, "none"),
    (5, "up→vm", None, "none"),
    (4095, "vm→up", 65, (65, 0)),
    (4095, "vm→up", None, None),
    (4095, "up→vm", 400, (400, 0)),
    (4095, "up→vm", None, None),
]


@pytest.mark.parametrize(("pgvlan", "direction", "vid", "expected"), PG,
                         ids=[f"pg{c[0]}|{c[1]}|vid{c[2]}" for c in PG])
def test_port_group_vlan_ids(pgvlan: int, direction: str, vid: int | None,
                             expected: object) -> None:
    sw = StandardSwitch("vs", clock=ManualClock())
    sw.add_port_group(PortGroup("pg", vlan=pgvlan))
    vm = sw.attach(Vif(1, 0, mac=A), "pg")
    up = sw.add_uplink(Pif("eth0"))
    if direction == "vm→up":
        sender, receiver, frame = vm.vnic.send, up, make(BCAST, A, vid=vid)
    else:
        sender, receiver, frame = up.receive, vm, make(BCAST, B, vid=vid)
    sender(frame)
    got = sent(receiver)
    ingress: Port = vm if direction == "vm→up" else up
    if isinstance(expected, str):
        assert got == []
        reason = "no-destination" if expected == "none" else expected
        assert ingress.counters.drops == {reason: 1}
    else:
        assert len(got) == 1 and tag_of(got[0]) == expected


# -- stacked tags, 802.1ad and 0x9100, as Open vSwitch handles them (default vlan-limit=1) ------
def _tag(tpid: int, vid: int, pcp: int = 0) -> bytes:
    return tpid.to_bytes(2, "big") + ((pcp << 13) | vid).to_bytes(2, "big")


INNER65 = _tag(0x8100, 65)
#: the header after the source MAC, by name; every frame ends in ethertype 0x0800 + 46 bytes
HDR = {
    "untagged": b"",
    "prio3": _tag(0x8100, 0, 3),
    "prio3+65": _tag(0x8100, 0, 3) + INNER65,
    "prio0+65": _tag(0x8100, 0) + INNER65,
    "sprio3+65": _tag(0x88A8, 0, 3) + INNER65,
    "s1pcp2+65": _tag(0x88A8, 1, 2) + INNER65,
    "s65": _tag(0x88A8, 65),
    "c1+65": _tag(0x8100, 1) + INNER65,
    "q1+65": _tag(0x9100, 1) + INNER65,
    "q0": _tag(0x9100, 0),
}


def _frame(hdr: bytes) -> bytes:
    return BCAST + A + hdr + b"\x08\x00" + bytes(46)


# (ingress mode, frame, egress mode, header expected after the source MAC, or a drop reason)
STACKED = [
    # the double-tagging hop: VID 0 over VID 65 on an access port of VLAN 1 ...
    (V.access(1), "prio3+65", V.native_untagged(1), INNER65),  # ... exposes tag 65
    (V.access(1), "prio3+65", V.trunk(), _tag(0x8100, 1, 3) + INNER65),
    (V.access(1), "prio3+65", V.native_tagged(1), _tag(0x8100, 1, 3) + INNER65),
    (V.access(1), "prio3+65", V.access(1), INNER65),
    (V.access(1), "prio3", V.trunk(), _tag(0x8100, 1, 3)),
    (V.access(1), "prio3", V.native_untagged(1), b""),
    # an 802.1ad priority tag becomes the port's VLAN with TPID 0x88a8 kept
    (V.access(1), "sprio3+65", V.trunk(), _tag(0x88A8, 1, 3) + INNER65),
    (V.access(1), "sprio3+65", V.native_untagged(1), INNER65),
    (V.native_untagged(1), "sprio3+65", V.trunk(), _tag(0x88A8, 1, 3) + INNER65),
    # an 802.1ad tag is a VLAN tag: dropped on access, classifies on trunks
    (V.access(1), "s1pcp2+65", V.trunk(), "tagged-on-access"),
    (V.access(1), "s65", V.trunk(), "tagged-on-access"),
    (V.trunk(), "s1pcp2+65", V.trunk(), _tag(0x88A8, 1, 2) + INNER65),
    (V.trunk(), "s1pcp2+65", V.access(1), INNER65),
    (V.trunk(), "s65", V.access(65), b""),
    (V.trunk(), "s65", V.trunk(1, 65), _tag(0x88A8, 65)),
    (V.trunk(1), "s65", V.trunk(), "vlan-not-allowed"),
    (V.native_tagged(1), "s65", V.native_untagged(65), b""),
    # an 802.1Q tag over an inner one: only the outer classifies; the inner rides along
    (V.trunk(), "c1+65", V.access(1), INNER65),
    (V.trunk(), "c1+65", V.native_untagged(1), INNER65),
    (V.trunk(), "c1+65", V.trunk(1), _tag(0x8100, 1) + INNER65),
    (V.trunk(), "c1+65", V.access(65), "no-destination"),
    # 0x9100 is not a VLAN TPID for OVS: the frame is untagged and classified by the port
    (V.access(1), "q1+65", V.trunk(), _tag(0x8100, 1) + _tag(0x9100, 1) + INNER65),
    (V.access(1), "q1+65", V.native_untagged(1), _tag(0x9100, 1) + INNER65),
    (V.access(1), "q0", V.trunk(), _tag(0x8100, 1) + _tag(0x9100, 0)),
    (V.trunk(), "q1+65", V.trunk(), _tag(0x9100, 1) + INNER65),
    (V.trunk(), "q1+65", V.access(1), "no-destination"),
    (V.trunk(1), "q1+65", V.trunk(), "vlan-not-allowed"),
    # untagged and priority-tagged frames of a plain trunk are VLAN 0: never on a native port
    (V.trunk(), "untagged", V.native_untagged(1), "no-destination"),
    (V.trunk(), "prio3", V.native_tagged(1), "no-destination"),
    (V.trunk(), "prio3", V.trunk(), _tag(0x8100, 0, 3)),
]


@pytest.mark.parametrize(
    ("mode_in", "kind", "mode_out", "expected"), STACKED,
    ids=[f"{c[0].describe()}|{c[1]}|{c[2].describe()}" for c in STACKED],
)
def test_stacked_and_8021ad_tags_as_open_vswitch(
    mode_in: V, kind: str, mode_out: V, expected: bytes | str
) -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    port_in = sw.add_port("in", mode_in)
    out = sw.add_port("out", mode_out)
    port_in.receive(_frame(HDR[kind]))
    got = sent(out)
    if isinstance(expected, str):
        assert got == []
        assert port_in.counters.drops == {expected: 1}
    else:
        assert got == [BCAST + A + expected + b"\x08\x00" + bytes(46)]


# the same rules through vSphere port groups: EST (0), VST (5), VGT (4095), and the uplink trunk
PG_STACKED = [
    (5, "vm→up", "prio3+65", _tag(0x8100, 5, 3) + INNER65),
    (5, "vm→up", "sprio3+65", _tag(0x88A8, 5, 3) + INNER65),
    (5, "vm→up", "s65", "tagged-on-access"),
    (5, "vm→up", "q1+65", _tag(0x8100, 5) + _tag(0x9100, 1) + INNER65),
    (0, "vm→up", "prio3+65", _tag(0x8100, 0, 3) + INNER65),  # EST: VLAN 0 keeps its PCP ...
    (0, "vm→up", "prio0+65", INNER65),  # ... and with PCP 0 leaves untagged: tag 65 exposed
    (0, "vm→up", "q0", _tag(0x9100, 0)),
    (4095, "vm→up", "c1+65", _tag(0x8100, 1) + INNER65),
    (4095, "vm→up", "s1pcp2+65", _tag(0x88A8, 1, 2) + INNER65),
    (4095, "vm→up", "prio3+65", _tag(0x8100, 0, 3) + INNER65),
    (5, "up→vm", "c1+65", "no-destination"),
    (5, "up→vm", "s65", "no-destination"),
    (1, "up→vm", "s1pcp2+65", INNER65),
    (1, "up→vm", "c1+65", INNER65),
    (0, "up→vm", "q1+65", _tag(0x9100, 1) + INNER65),
    (4095, "up→vm", "s1pcp2+65", _tag(0x88A8, 1, 2) + INNER65),
]


@pytest.mark.parametrize(("pgvlan", "direction", "kind", "expected"), PG_STACKED,
                         ids=[f"pg{c[0]}|{c[1]}|{c[2]}" for c in PG_STACKED])
def test_port_groups_with_stacked_and_8021ad_tags(
    pgvlan: int, direction: str, kind: str, expected: bytes | str
) -> None:
    sw = StandardSwitch("vs", clock=ManualClock())
    sw.add_port_group(PortGroup("pg", vlan=pgvlan))
    vm = sw.attach(Vif(1, 0, mac=A), "pg")
    up = sw.add_uplink(Pif("eth0"))
    src = A if direction == "vm→up" else B
    frame = BCAST + src + HDR[kind] + b"\x08\x00" + bytes(46)
    sender, receiver = (vm.vnic.send, up) if direction == "vm→up" else (up.receive, vm)
    ingress: Port = vm if direction == "vm→up" else up
    sender(frame)
    got = sent(receiver)
    if isinstance(expected, str):
        assert got == []
        assert ingress.counters.drops == {expected: 1}
    else:
        assert got == [BCAST + src + expected + b"\x08\x00" + bytes(46)]
