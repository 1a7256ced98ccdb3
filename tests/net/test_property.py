"""Property: over random port groups, VLANs and frames, no frame leaves a port that does not
carry its VLAN, and no non-promiscuous vNIC receives unicast addressed to another MAC.

The VLAN a frame belongs to is computed here by an independent model of the ingress rules; every
frame that leaves any port must belong to that VLAN as the output port reads it.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.clock import ManualClock
from netsim.dataplane.policy import SecurityPolicy, VlanMode, VlanPolicy
from netsim.dataplane.port import Pif, Port, Vif
from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch
from netsim.wire import frame as fr

MACS = [bytes([0x00, 0x16, 0x3E, 0, 0, i]) for i in range(1, 9)]
OUTSIDE = [bytes([0x02, 0, 0, 0, 0, i]) for i in range(1, 4)]
DSTS = st.sampled_from([*MACS, *OUTSIDE, fr.BROADCAST, bytes.fromhex("01005e000001")])
TAGS = st.sampled_from([None, 0, 1, 5, 65, 400, 7, 4095])
NATIVE = (VlanMode.NATIVE_TAGGED, VlanMode.NATIVE_UNTAGGED)


def classify(pol: VlanPolicy, f: bytes) -> int | None:
    """The VLAN a frame arriving on a port with `pol` joins, or None if it is dropped."""
    v = fr.parse(f)
    tagged = v.tags > 0 and v.vid != 0
    if pol.mode is VlanMode.ACCESS:
        return None if tagged else pol.vlan
    if tagged:
        vid = v.vid
    else:
        vid = pol.vlan if pol.mode in NATIVE else 0
    return vid if vid != 4095 and pol.carries(vid) else None


def check_egress(port: Port, out: bytes, vid: int) -> None:
    pol: VlanPolicy = port.sw_vlan
    assert pol.carries(vid), f"{port.name} ({pol.describe()}) got a frame of VLAN {vid}"
    if vid == 0 and pol.mode in NATIVE:
        assert not fr.parse(out).tags  # VLAN 0 leaves untagged everywhere
        return
    assert classify(pol, out) == vid, f"{port.name} would read VLAN {classify(pol, out)}"


@st.composite
def vss_scenario(draw):
    groups = draw(st.lists(st.tuples(st.sampled_from([0, 5, 65, 400, 4095]), st.booleans()),
                           min_size=1, max_size=4))
    nvm = draw(st.integers(1, len(MACS)))
    placement = [draw(st.integers(0, len(groups) - 1)) for _ in range(nvm)]
    uplink = draw(st.sampled_from([VlanPolicy.trunk(), VlanPolicy.trunk(0, 5),
                                   VlanPolicy.native_untagged(65, 5, 400)]))
    frames = draw(st.lists(st.tuples(st.integers(-1, nvm - 1), DSTS, TAGS, st.booleans()),
                           min_size=1, max_size=25))
    return groups, placement, uplink, frames


@settings(max_examples=80, deadline=None)
@given(vss_scenario())
def test_vswitch_never_leaks_and_promiscuous_reject_holds(sc) -> None:
    groups, placement, uplink, frames = sc
    sw = StandardSwitch("vs", clock=ManualClock())
    for i, (vlan, promisc) in enumerate(groups):
        sw.add_port_group(PortGroup(f"g{i}", vlan=vlan,
                                    security=SecurityPolicy(promiscuous=promisc)))
    vms = [sw.attach(Vif(i + 1, 0, mac=MACS[i]), f"g{g}") for i, g in enumerate(placement)]
    up = sw.add_uplink(Pif("eth0"), vlan=uplink)
    everyone: list[Port] = [*vms, up]
    for sender, dst, tag, forge in frames:
        if sender < 0:
            port: Port = up
            f = fr.ethernet(dst, OUTSIDE[int(forge)], 0x0800, vid=tag)
            up.receive(f)
        else:
            port = vms[sender]
            f = fr.ethernet(dst, OUTSIDE[2] if forge else MACS[sender], 0x0800, vid=tag)
            port.vnic.send(f)
        vid = classify(port.sw_vlan, f)
        for p in everyone:
            outs = [p.queue.get_nowait() for _ in range(len(p.queue))]
            if outs:
                assert vid is not None, "a frame the ingress rules drop got through"
                assert p is not port, "never back out of the ingress port"
            for out in outs:
                check_egress(p, out, vid)
                if p is not up:
                    g = p.sw_group
                    if not g.security.promiscuous and not out[0] & 1:
                        assert out[:6] == p.vnic.effective_mac, "unicast for another MAC"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(list(VlanMode)), min_size=2, max_size=5), st.data())
def test_physical_bridge_never_leaks(modes, data) -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    ports = []
    for i, m in enumerate(modes):
        vl = data.draw(st.sampled_from([1, 5, 65]))
        allowed = data.draw(st.sets(st.sampled_from([0, 1, 5, 65, 400]), max_size=3))
        pol = VlanPolicy(m, vl) if m is VlanMode.ACCESS else VlanPolicy(
            m, vl if m in NATIVE else 0, frozenset(allowed))
        ports.append(sw.add_port(f"p{i}", pol))
    for _ in range(data.draw(st.integers(1, 20))):
        i = data.draw(st.integers(0, len(ports) - 1))
        f = fr.ethernet(data.draw(DSTS), data.draw(st.sampled_from(OUTSIDE + MACS[:3])),
                        0x0800, vid=data.draw(TAGS))
        vid = classify(ports[i].sw_vlan, f)
        ports[i].receive(f)
        for j, p in enumerate(ports):
            outs = [p.queue.get_nowait() for _ in range(len(p.queue))]
            if outs:
                assert vid is not None and j != i
            for out in outs:
                check_egress(p, out, vid)
