"""Port mirroring sessions (VMwareVspanSession): sampling 1 in N, mirrored packet length,
normal I/O on the destination, RSPAN source → physical switch → RSPAN destination, ERSPAN."""
from __future__ import annotations

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.mirror import (
    ErspanSource,
    MirrorSession,
    RspanSource,
    rspan_destination,
    rspan_vlan,
    to_port,
)
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch
from netsim.errors import ConfigError
from netsim.wire.erspan import ErspanTunnel, decapsulate

from .conftest import make, sent, tag_of

MAC = [bytes([0, 0x16, 0x3E, 0, 0, i]) for i in range(8)]


def host(clock: ManualClock, name: str = "vs", vlan: int = 10):
    sw = StandardSwitch(name, clock=clock)
    sw.add_port_group(PortGroup("pg", vlan=vlan))
    a = sw.attach(Vif(1, 0, mac=MAC[1]), "pg")
    b = sw.attach(Vif(2, 0, mac=MAC[2]), "pg")
    mon = sw.attach(Vif(3, 0, mac=MAC[3]), "pg")
    up = sw.add_uplink(Pif("vmnic0"))
    return sw, a, b, mon, up


@pytest.mark.parametrize(("rate", "frames", "kept"), [
    (1, 10, 10), (2, 10, 5), (3, 10, 4), (4, 3, 1), (10, 100, 10), (65535, 5, 1)])
def test_sampling_keeps_one_in_n_starting_with_the_first(rate: int, frames: int,
                                                          kept: int) -> None:
    sw, a, b, mon, _ = host(ManualClock())
    s = MirrorSession("s", to_port(mon), sampling_rate=rate)
    s.attach(sw, [a], egress=False)
    for i in range(frames):
        a.vnic.send(make(b.vnic.mac, a.vnic.mac, size=60 + i))
    got = [f for f in sent(mon) if f[6:12] == a.vnic.mac]
    assert [len(f) for f in got] == [60 + i for i in range(0, frames, rate)]
    assert len(got) == kept
    assert s.counters.offered == frames and s.counters.sampled_out == frames - kept


@pytest.mark.parametrize(("length", "size", "out", "cut"), [
    (None, 1514, 1514, False), (60, 1514, 60, True), (128, 100, 100, False),
    (128, 128, 128, False), (128, 129, 128, True)])
def test_mirrored_packet_length_truncates_copies_only(length: int | None, size: int, out: int,
                                                      cut: bool) -> None:
    sw, a, b, mon, _ = host(ManualClock())
    s = MirrorSession("s", to_port(mon), mirrored_packet_length=length)
    s.attach(sw, [a], egress=False)
    a.vnic.send(make(b.vnic.mac, a.vnic.mac, size=size))
    assert [len(f) for f in sent(b)] == [size]  # the original is whole
    assert [len(f) for f in sent(mon)] == [out]
    assert s.counters.truncated == int(cut)


@pytest.mark.parametrize(("rate", "length"), [(0, None), (65536, None), (True, None),
                                             (1, 59), (1, 0), (1, "64")])
def test_session_options_out_of_range_are_refused(rate: object, length: object) -> None:
    with pytest.raises(ConfigError, match=r"mirror session s: (sampling_rate|mirrored_packet)"):
        MirrorSession("s", lambda f, t, e: None, sampling_rate=rate,  # type: ignore[arg-type]
                      mirrored_packet_length=length)  # type: ignore[arg-type]


@pytest.mark.parametrize("normal", [True, False])
def test_normal_traffic_on_the_destination_port(normal: bool) -> None:
    sw, a, b, mon, _ = host(ManualClock())
    MirrorSession("s", to_port(mon)).attach(sw, [a])
    if not normal:
        sw.block(mon, reason="mirror-destination")
    a.vnic.send(make(mon.vnic.mac, a.vnic.mac))  # normal traffic to the destination
    mon.vnic.send(make(b.vnic.mac, mon.vnic.mac))  # and from it
    b.vnic.send(make(a.vnic.mac, b.vnic.mac))  # mirrored (a's egress)
    got = sent(mon)
    mirrored = [f for f in got if f[0:6] == a.vnic.mac or f[6:12] == a.vnic.mac]
    assert len(mirrored) == 2 + (1 if normal else 0)  # a's ingress copy, a's egress copy
    assert len(sent(b)) == (1 if normal else 0)
    drops = mon.counters.drops.get("mirror-destination", 0)
    assert drops == (0 if normal else 2)


def test_rspan_source_to_physical_switch_to_destination_host() -> None:
    """Host 1 mirrors a VM into RSPAN VLAN 999; the physical switch carries it (learning
    nothing, so replies go the same way); host 2 delivers it to its analyzer, without the
    RSPAN tag but with the original VLAN tag kept inside (stripOriginalVlan false)."""
    clock = ManualClock()
    sw1, a, b, _, up1 = host(clock, "esx1")
    sw2, _, _, mon, up2 = host(clock, "esx2", vlan=20)
    phys = PhysicalSwitch("core", clock=clock)
    p1 = phys.add_port("to-esx1")
    p2 = phys.add_port("to-esx2")
    p3 = phys.add_port("to-esx3")
    rspan_vlan(phys, 999)
    src = MirrorSession("src", lambda f, t, e: None, tag_original_vlan=True)
    src.deliver = RspanSource([up1], 999, src.counters)
    src.attach(sw1, [a])
    dst = MirrorSession("dst", to_port(mon))
    rspan_destination(sw2, 999, dst)
    a.vnic.send(make(b.vnic.mac, a.vnic.mac))
    b.vnic.send(make(a.vnic.mac, b.vnic.mac))
    copies = [f for f in sent(up1) if tag_of(f) == (999, 0)]  # (a's unknown unicast floods)
    assert len(copies) == 2
    for f in copies:  # the physical network: esx1 → core → esx2 (and esx3: flooded)
        p1.receive(f)
    on_wire = sent(p2)
    assert len(on_wire) == 2 and len(sent(p3)) == 2
    assert phys.mac_entries() == []  # nothing learned in the RSPAN VLAN
    for f in on_wire:
        up2.receive(f)
    got = sent(mon)
    assert [tag_of(f) for f in got] == [(10, 0), (10, 0)]  # original tag inside, RSPAN gone
    assert [f[6:12] for f in got] == [a.vnic.mac, b.vnic.mac]
    assert dst.counters.mirrored == 2


def test_rspan_source_strips_the_original_vlan_when_asked() -> None:
    sw, a, b, _, up = host(ManualClock())
    s = MirrorSession("s", lambda f, t, e: None, strip_original_vlan=True,
                      tag_original_vlan=True)
    s.deliver = RspanSource([up], 999, s.counters)
    s.attach(sw, [a], egress=False)
    b.vnic.send(make(a.vnic.mac, b.vnic.mac))  # learn b: a's frame to b stays on the host
    sent(up)
    a.vnic.send(make(b.vnic.mac, a.vnic.mac, size=100))
    (f,) = sent(up)
    assert tag_of(f) == (999, 0) and f[16:18] == b"\x08\x00" and len(f) == 104


def test_rspan_source_with_its_uplink_down_counts_the_copy() -> None:
    sw, a, b, _, up = host(ManualClock())
    s = MirrorSession("s", lambda f, t, e: None)
    s.deliver = RspanSource([up], 999, s.counters)
    s.attach(sw, [a])
    up.set_link(False)
    a.vnic.send(make(b.vnic.mac, a.vnic.mac))
    assert s.counters.no_uplink == 1 and s.counters.mirrored == 1


@pytest.mark.parametrize("enc", ["gre", "erspan2", "erspan3"])
def test_erspan_source_encapsulates_with_sequence_and_truncation(enc: str) -> None:
    clock = ManualClock()
    sw, a, b, _, up = host(clock)
    tun = ErspanTunnel(enc, MAC[6], MAC[7], bytes([192, 0, 2, 1]), bytes([192, 0, 2, 9]),
                       session_id=42)
    s = MirrorSession("s", lambda f, t, e: None, mirrored_packet_length=64,
                      tag_original_vlan=True)
    s.deliver = ErspanSource(tun, [up], clock, s.counters)
    s.attach(sw, [a])
    a.vnic.send(make(b.vnic.mac, a.vnic.mac, size=200))
    clock.advance(0.001)
    b.vnic.send(make(a.vnic.mac, b.vnic.mac, size=50))
    outer = [f for f in sent(up) if f[12:14] == b"\x08\x00" and f[23] == 47]
    assert len(outer) == 2
    d = [decapsulate(f) for f in outer]
    assert [x.encapsulation for x in d] == [enc, enc]
    # the original VLAN's tag (port group VLAN 10) is added, then cut to 64 bytes
    assert [len(x.frame) for x in d] == [64, 64]
    assert [tag_of(x.frame) for x in d] == [(10, 0), (10, 0)]
    if enc != "gre":
        assert [x.seq for x in d] == [0, 1]
        assert [x.truncated for x in d] == [True, False]
        assert [x.session_id for x in d] == [42, 42]
        assert [x.vlan for x in d] == [10, 10]
    if enc == "erspan3":
        assert [x.egress for x in d] == [False, True]
        assert d[1].timestamp - d[0].timestamp == 10  # 1 ms in 100 us units
