"""Batched ingress switches exactly as frame-by-frame ingress does: same frames out of every
port in the same order, same counters, same MAC table — for any mix of frames and ports."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.clock import ManualClock
from netsim.dataplane.policy import SecurityPolicy, ShapingPolicy, TeamingPolicy, VlanPolicy
from netsim.dataplane.port import Pif, Port, Vif
from netsim.dataplane.switch import Bridge, PhysicalSwitch, PortGroup, StandardSwitch
from netsim.wire import frame as fr

from .conftest import BCAST, make, sent

MACS = [bytes([0, 0x16, 0x3E, 0, 0, i]) for i in range(1, 6)] + [
    bytes.fromhex("020000000001"), bytes.fromhex("020000000002")]


def vswitch(promisc: bool) -> tuple[StandardSwitch, list[Port]]:
    sw = StandardSwitch("vs", clock=ManualClock(), mac_table_size=16,
                        teaming=TeamingPolicy())
    sw.add_port_group(PortGroup("a", vlan=5))
    sw.add_port_group(PortGroup("b", security=SecurityPolicy(promiscuous=promisc,
                                                             forged_transmits=False)))
    sw.add_port_group(PortGroup("vgt", vlan=4095))
    sw.add_port_group(PortGroup("slow", vlan=5, shaping=ShapingPolicy(8000, 80000, 300)))
    ports: list[Port] = [
        sw.attach(Vif(1, 0, mac=MACS[0]), "a"),
        sw.attach(Vif(2, 0, mac=MACS[1]), "a"),
        sw.attach(Vif(3, 0, mac=MACS[2]), "b"),
        sw.attach(Vif(4, 0, mac=MACS[3]), "vgt"),
        sw.attach(Vif(5, 0, mac=MACS[4]), "slow"),
    ]
    ports += [sw.add_uplink(Pif(f"vmnic{i}")) for i in range(2)]
    sw.mirror([ports[1]], ports[3], egress=False)
    return sw, ports


def physical() -> tuple[PhysicalSwitch, list[Port]]:
    sw = PhysicalSwitch("core", clock=ManualClock(), mac_table_size=6)
    ports = [
        sw.add_port("p0", VlanPolicy.access(5)),
        sw.add_port("p1", VlanPolicy.trunk(5, 10)),
        sw.add_port("p2", VlanPolicy.native_untagged(10, 5)),
        sw.add_port("p3", VlanPolicy.native_tagged(5)),
        sw.add_port("p4", VlanPolicy.trunk()),
    ]
    return sw, ports


frames = st.builds(
    lambda dst, src, vid, pcp, arp, size: make(
        dst, src, vid=vid, pcp=pcp if vid is not None else 0,
        ethertype=0x0806 if arp else 0x0800, size=size),
    dst=st.sampled_from([*MACS, *MACS, *MACS, BCAST, bytes.fromhex("01005e000001")]),
    src=st.sampled_from(MACS),
    vid=st.sampled_from([None, None, 0, 5, 10]),
    pcp=st.sampled_from([0, 3]),
    arp=st.sampled_from([False, False, False, True]),
    size=st.sampled_from([60, 60, 60, 14, 1514, 1600]),
)
# well-formed unicast between known stations: the runs batching reuses a decision for
unicast = st.builds(
    lambda dst, src, vid, n: make(dst, src, vid=vid, size=60 + n),
    dst=st.sampled_from(MACS), src=st.sampled_from(MACS), vid=st.sampled_from([None, 5]),
    n=st.integers(0, 3),
)
# runs of the same frame, on random ports
batches = st.lists(
    st.tuples(st.integers(0, 6),
              st.lists(st.tuples(st.one_of(frames, unicast, unicast), st.integers(1, 6)),
                       max_size=6)),
    min_size=1, max_size=8,
)


def state(sw: Bridge, ports: list[Port]) -> tuple:
    return (
        [sent(p) for p in ports],
        [p.counters.as_dict() for p in ports],
        [(e.vlan, e.mac, e.port.name, e.locked) for e in sw.mac_entries()],
    )


def play(build, batches, batched: bool) -> tuple:
    sw, ports = build()
    for i, port in enumerate(ports):  # most stations known: runs of unicast to reuse
        port.receive(make(BCAST, MACS[i % len(MACS)], vid=5 if i > 4 else None))
    for idx, runs in batches:
        port = ports[idx % len(ports)]
        fs = [f for f, k in runs for _ in range(k)]
        if batched:
            port.receive_batch(fs)
        else:
            for f in fs:
                port.receive(f)
    return state(sw, ports)


@settings(max_examples=150, deadline=None)
@given(batches=batches, promisc=st.booleans())
def test_vswitch_batch_equals_frame_by_frame(batches, promisc: bool) -> None:
    def build():
        return vswitch(promisc)

    assert play(build, batches, True) == play(build, batches, False)


@settings(max_examples=100, deadline=None)
@given(batches=batches)
def test_physical_batch_equals_frame_by_frame(batches) -> None:
    assert play(physical, batches, True) == play(physical, batches, False)


def test_a_run_is_switched_once_and_every_frame_arrives_tagged() -> None:
    sw, ports = vswitch(False)
    vm, up = ports[0], ports[5]
    peer = bytes.fromhex("020000000001")
    up.receive(make(vm.vnic.mac, peer, vid=5))  # the peer is learned behind vmnic0
    sent(vm)
    out = sw.uplink_for(vm)
    run = [fr.ethernet(peer, vm.vnic.mac, 0x0800, bytes([i % 256, i >> 8]) * 23)
           for i in range(300)]
    vm.vnic.send_many(run)
    got = sent(out)
    assert [fr.pop_tag(f) for f in got] == run  # in order, payloads intact
    assert {fr.parse(f).vid for f in got} == {5}
    assert vm.counters.rx_frames == 300 and out.counters.tx_frames == 300
