"""LAGs and bonds moving frames: a port-channel on the physical switch learns once for all its
members (no MAC flapping), IP hash without one flaps as a real switch shows, hash distribution
keeps a flow on one member and spreads flows, XenServer's active-backup and balance-slb
(rebalancing by load every interval)."""
from __future__ import annotations

import ipaddress

import pytest

from netsim.clock import NS_PER_S, ManualClock
from netsim.dataplane.lag import (
    HASHES,
    Lag,
    LagConfig,
    LagPort,
    hash_frame,
    rarp_learning_packet,
)
from netsim.dataplane.policy import LoadBalancing, TeamingPolicy
from netsim.dataplane.port import Pif, Port, Vif
from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch
from netsim.wire import frame as fr

from .conftest import BCAST, sent

VM = bytes.fromhex("00163e000001")
PEER = bytes.fromhex("020000000099")


def udp(dst_mac: bytes, src_mac: bytes, src: str, dst: str, sport: int = 1000,
        dport: int = 2000) -> bytes:
    ip = (bytes((0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0))
          + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed)
    l4 = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4)
    return fr.ethernet(dst_mac, src_mac, fr.ETHERTYPE_IPV4, ip + l4 + bytes(18))


def carry(pairs: list[tuple[Port, Port]]) -> None:
    """Move what each cable end sent to the other end, until quiet."""
    for _ in range(20):
        moved = False
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                for f in sent(x):
                    moved = True
                    y.receive(f)
        if not moved:
            return


def host_and_switch(kind: str):
    """A vSS with one VM, two NICs cabled to a physical switch, set up as `kind`:
    port-id / ip-hash (plain teaming, two plain switch ports), ip-hash+channel (a static
    port-channel upstream), lag (a LACP LAG on both sides)."""
    clock = ManualClock()
    vss = StandardSwitch("vs", clock=clock)
    phys = PhysicalSwitch("core", clock=clock)
    nics = [Pif(f"vmnic{i}") for i in range(2)]
    if kind == "lag":
        lp = LagPort("lag1")
        hl = Lag(lp, LagConfig(rate="fast"), system=bytes.fromhex("020000000e00"))
        for n in nics:
            hl.add_member(n)
        vss.add_uplink(lp)
    else:
        for n in nics:
            vss.add_uplink(n)
        lb = LoadBalancing.PORT_ID if kind == "port-id" else LoadBalancing.IP_HASH
        vss.teaming = TeamingPolicy(load_balancing=lb)
    if kind in ("lag", "ip-hash+channel"):
        po = LagPort("Po1")
        mode = "lacp" if kind == "lag" else "static"
        pl = Lag(po, LagConfig(mode=mode, rate="fast", hashing="srcDestIp"),
                 system=bytes.fromhex("020000000c00"))
        ports = [Port(f"gi{i}") for i in range(2)]
        for p in ports:
            pl.add_member(p)
        phys.add_port(po)
        lags = [lg for lg in (pl, hl if kind == "lag" else None) if lg is not None]
    else:
        ports = [phys.add_port(Port(f"gi{i}")) for i in range(2)]
        lags = []
    server = phys.add_port(Port("server"))
    for lg in lags:
        lg.start(clock.now_ns())
    pairs = list(zip(nics, ports, strict=True))
    carry(pairs)
    vss.add_port_group(PortGroup("pg"))
    vm = vss.attach(Vif(1, 0, mac=VM), "pg")
    return clock, vss, phys, vm, pairs, server


@pytest.mark.parametrize(("kind", "flaps"), [
    ("port-id", False),
    ("ip-hash", True),  # IP hash without an EtherChannel: the VM's MAC flaps between gi0/gi1
    ("ip-hash+channel", False),  # the same team into a static port-channel: learned on Po1
    ("lag", False),  # a LACP LAG on both ends
])
def test_ip_hash_flaps_the_vm_mac_on_a_switch_without_a_port_channel(kind: str,
                                                                     flaps: bool) -> None:
    clock, _vss, phys, vm, pairs, server = host_and_switch(kind)
    for last in range(16):  # 16 flows to 16 destinations
        clock.advance(0.01)
        vm.vnic.send(udp(PEER, VM, "10.0.0.8", f"10.0.1.{last}"))
        carry(pairs)
    assert len(sent(server)) == 16  # every frame got through, flapping or not
    log = phys.mac_flaps
    if flaps:
        assert phys.mac_table.moves == log.total >= 8
        (row,) = log.as_list()
        assert row["mac"] == "00:16:3e:00:00:01" and sorted(row["ports"]) == ["gi0", "gi1"]
        assert "is flapping between gi" in log.flaps[0, VM].message("core")
    else:
        assert phys.mac_table.moves == log.total == 0 and log.as_list() == []
        learned = {e.port.name for e in phys.mac_entries() if e.mac == "00:16:3e:00:00:01"}
        assert learned == {"Po1"} if kind != "port-id" else len(learned) == 1


def test_a_port_channel_floods_once_and_sends_unicast_down_one_member() -> None:
    _clock, _vss, phys, vm, pairs, server = host_and_switch("lag")
    server.receive(fr.ethernet(BCAST, PEER, 0x88B5, bytes(46)))
    carry(pairs)
    assert len(sent(vm)) == 1  # down one member, into the VM once
    vm.vnic.send(udp(PEER, VM, "10.0.0.8", "10.0.0.9"))
    carry(pairs)
    sent(server)
    for i in range(32):
        server.receive(udp(VM, PEER, "10.0.0.9", "10.0.0.8", sport=i))
    carry(pairs)
    assert len(sent(vm)) == 32
    assert phys.mac_flaps.total == 0


@pytest.mark.parametrize("algorithm", sorted(HASHES))
def test_every_hash_keeps_a_flow_on_one_member_and_only_reads_its_fields(algorithm: str) -> None:
    fields = HASHES[algorithm]
    base = udp(PEER, VM, "10.0.0.1", "10.0.0.2", 1000, 2000)
    assert hash_frame(base, algorithm) == hash_frame(base, algorithm)
    variants = {  # one field changed at a time
        "smac": udp(PEER, VM[:5] + b"\x09", "10.0.0.1", "10.0.0.2", 1000, 2000),
        "dmac": udp(PEER[:5] + b"\x09", VM, "10.0.0.1", "10.0.0.2", 1000, 2000),
        "sip": udp(PEER, VM, "10.0.0.7", "10.0.0.2", 1000, 2000),
        "dip": udp(PEER, VM, "10.0.0.1", "10.0.0.7", 1000, 2000),
        "sport": udp(PEER, VM, "10.0.0.1", "10.0.0.2", 1007, 2000),
        "dport": udp(PEER, VM, "10.0.0.1", "10.0.0.2", 1000, 2007),
        "vlan": fr.push_tag(base, 5),
    }
    for field, frame in variants.items():
        same = hash_frame(frame, algorithm) == hash_frame(base, algorithm)
        assert same == (field not in fields), field


def test_hashing_spreads_flows_over_the_members_within_binomial_bounds() -> None:
    lag = Lag(LagPort("po"), LagConfig(mode="static", hashing="srcDestIpTcpUdpPort"))
    members = [Port(f"m{i}") for i in range(4)]
    for m in members:
        lag.add_member(m)
    n = 4000
    for i in range(n):
        lag.port.transmit(udp(PEER, VM, "10.0.0.1", "10.0.0.2", 1024 + i, 80))
    counts = [len(sent(m)) for m in members]
    # each member ~ Binomial(4000, 1/4): mean 1000, sd 27.4; 5 sd either way
    assert sum(counts) == n and all(863 <= c <= 1137 for c in counts), counts


def test_a_static_channel_member_down_moves_its_flows_to_the_others() -> None:
    lag = Lag(LagPort("po"), LagConfig(mode="static"))
    members = [Port(f"m{i}") for i in range(3)]
    for m in members:
        lag.add_member(m)
    frames = [udp(PEER, VM, "10.0.0.1", f"10.0.2.{i}", 5, 6) for i in range(60)]
    for f in frames:
        lag.port.transmit(f)
    assert all(sent(m) for m in members)
    members[1].set_link(False)
    for f in frames:
        assert lag.port.transmit(f)
    assert [len(sent(m)) for m in members][1] == 0
    for m in (members[0], members[2]):
        m.set_link(False)
    assert not lag.port.link_up and not lag.port.transmit(frames[0])
    assert lag.port.counters.drops == {"link-down": 1}


def test_active_backup_uses_one_member_fails_over_and_does_not_fail_back() -> None:
    lag = Lag(LagPort("bond0"), LagConfig(mode="active-backup"))
    eth = [Pif("eth0"), Pif("eth1")]
    for p in eth:
        lag.add_member(p)
    sw = StandardSwitch("xenbr0", clock=ManualClock())
    sw.add_uplink(lag.port)
    sw.add_port_group(PortGroup("xenbr0"))
    vif = sw.attach(Vif(1, 0, mac=VM), "xenbr0")
    for i in range(10):
        vif.vnic.send(udp(PEER, VM, "10.0.0.1", f"10.0.0.{i + 2}"))
    assert (len(sent(eth[0])), len(sent(eth[1]))) == (10, 0)
    bc = fr.ethernet(BCAST, PEER, 0x88B5, bytes(46))
    eth[1].receive(bc)  # the backup accepts nothing
    eth[0].receive(bc)
    assert len(sent(vif)) == 1 and eth[1].counters.drops == {"lag-not-collecting": 1}
    eth[0].set_link(False)
    # OVS: the new active member announces each MAC behind the bond (one RARP each)
    assert sent(eth[1]) == [rarp_learning_packet(VM)] and lag.learning_packets_sent == 1
    vif.vnic.send(udp(PEER, VM, "10.0.0.1", "10.0.0.2"))
    assert len(sent(eth[1])) == 1 and lag.failovers == 1
    eth[0].set_link(True)  # recovered: stays backup
    vif.vnic.send(udp(PEER, VM, "10.0.0.1", "10.0.0.2"))
    assert (len(sent(eth[0])), len(sent(eth[1]))) == (0, 1)
    assert lag.status()["active"] == "eth1"


def test_balance_slb_rebalances_source_macs_by_load_every_interval() -> None:
    lag = Lag(LagPort("bond0"), LagConfig(mode="balance-slb", rebalance_interval_ms=10_000))
    eth = [Pif("eth0"), Pif("eth1")]
    for p in eth:
        lag.add_member(p)
    t0 = 0
    lag.start(t0)
    assert lag.next_due_ns() == t0 + 10 * NS_PER_S
    # eight source MACs placed by their hash (1500 vs 5700 bytes here), very unequal loads
    macs = [bytes.fromhex(f"00163e0000{i:02x}") for i in range(1, 9)]
    loads = [40, 30, 20, 10, 5, 5, 5, 5]
    for mac, k in zip(macs, loads, strict=True):
        for _ in range(k):
            lag.port.transmit(udp(PEER, mac, "10.0.0.1", "10.0.0.2"))
    before = [sum(map(len, sent(p))) for p in eth]
    lag.tick(t0 + 10 * NS_PER_S)  # the interval elapses: rebalance
    assert lag.next_due_ns() == t0 + 20 * NS_PER_S
    for mac, k in zip(macs, loads, strict=True):
        for _ in range(k):
            lag.port.transmit(udp(PEER, mac, "10.0.0.1", "10.0.0.2"))
    after = [sum(map(len, sent(p))) for p in eth]
    assert abs(after[0] - after[1]) < abs(before[0] - before[1]) and lag.rebalances >= 1
    # the best split of 40/30/20/10/5/5/5/5 (120 units) is 60/60; a greedy move gets close
    assert abs(after[0] - after[1]) <= 10 * len(udp(PEER, VM, "1.1.1.1", "1.1.1.1"))
    # each source MAC still leaves by exactly one member (no reordering within a MAC)
    for mac in macs:
        lag.port.transmit(udp(PEER, mac, "10.0.0.1", "10.0.0.2"))
        lag.port.transmit(udp(PEER, mac, "10.0.0.1", "10.0.0.3"))
        assert sorted(len(sent(p)) for p in eth) == [0, 2]


def test_balance_slb_takes_floods_only_on_the_active_member() -> None:
    lag = Lag(LagPort("bond0"), LagConfig(mode="balance-slb"))
    eth = [Pif("eth0"), Pif("eth1")]
    for p in eth:
        lag.add_member(p)
    sw = StandardSwitch("xenbr0", clock=ManualClock())
    sw.add_uplink(lag.port)
    sw.add_port_group(PortGroup("xenbr0"))
    vif = sw.attach(Vif(1, 0, mac=VM), "xenbr0")
    bc = fr.ethernet(BCAST, PEER, 0x88B5, bytes(46))
    for p in eth:  # the physical switch floods down both
        p.receive(bc)
    assert len(sent(vif)) == 1
    eth[1].receive(udp(VM, PEER, "10.0.0.1", "10.0.0.2"))  # unicast: any member
    assert len(sent(vif)) == 1


def test_the_fast_hash_is_the_field_hash_for_any_frame() -> None:
    """`hash_frame` reads fields by slicing; `_fields` states them plainly: same value for
    tagged, untagged, IP, fragment, non-IP and cut frames (fixed seed)."""
    import random
    import zlib

    from netsim.dataplane.lag import _fields

    rng = random.Random(19)
    base = [udp(PEER, VM, "10.0.0.1", "10.0.0.2", 1000, 2000), fr.push_tag(udp(
        PEER, VM, "10.1.2.3", "10.3.2.1", 5, 6), 77), fr.ethernet(BCAST, VM, 0x88B5, bytes(46))]
    for _ in range(300):
        f = bytearray(rng.choice(base))
        for _ in range(rng.randrange(4)):  # flip bytes anywhere in the headers
            f[rng.randrange(48)] = rng.randrange(256)
        f = bytes(f[:rng.choice((len(f), 14, 20, 30, 40))])
        for alg, fields in HASHES.items():
            d = _fields(f)
            assert hash_frame(f, alg) == zlib.crc32(b"|".join(d[k] for k in fields)), alg


def test_lacpdus_on_a_port_outside_any_lag_are_not_forwarded() -> None:
    """LACP from a host whose switch ports are not a channel: link-local, counted, never
    flooded on to other hosts (IEEE 802.3 Annex 57A; OVS drops them too)."""
    from netsim.wire.lacp import Lacpdu, LacpInfo, encode_lacpdu

    pdu = encode_lacpdu(VM, Lacpdu(LacpInfo(1, VM, 1, 1, 1, 0x3D), LacpInfo()))
    phys = PhysicalSwitch("core", clock=ManualClock())
    a, b = phys.add_port(Port("a")), phys.add_port(Port("b"))
    a.receive(pdu)
    assert sent(b) == [] and a.counters.drops == {"slow-protocols": 1}
    vss = StandardSwitch("vs", clock=ManualClock())
    up = vss.add_uplink(Pif("vmnic0"))
    vss.add_port_group(PortGroup("pg"))
    vm = vss.attach(Vif(1, 0, mac=VM), "pg")
    up.receive(pdu)
    assert sent(vm) == [] and up.counters.drops == {"slow-protocols": 1}
