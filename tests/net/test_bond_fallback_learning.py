"""Open vSwitch bond behaviour XenServer users see: learning packets (a RARP per MAC behind the
bond, out the member that MAC's frames take) when the active member changes, and
`lacp-fallback-ab` (an LACP bond whose partner never speaks LACP runs active-backup instead of
going down, and returns to LACP at the first LACPDU)."""
from __future__ import annotations

import pytest

from netsim.clock import NS_PER_S, ManualClock
from netsim.dataplane.lag import Lag, LagConfig, LagPort, rarp_learning_packet
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.wire import frame as fr
from netsim.wire.lacp import ACTIVITY, AGGREGATION, SYNC, Lacpdu, LacpInfo, encode_lacpdu

from .conftest import sent

PEER = bytes.fromhex("020000000099")
PEER_SYS = bytes.fromhex("02000000bb00")
VMS = [bytes.fromhex(f"00163e0000{i:02x}") for i in range(1, 9)]


def bonded_host(config: LagConfig, n_vms: int = 8, vlan_vm: bool = True):
    """xenbr0 over bond0 (eth0, eth1) with `n_vms` VIFs, and (vlan_vm) xapi0 over bond0.5
    with one more VIF; every VIF has sent one frame, so the bridges learned them."""
    clock = ManualClock()
    lag = Lag(LagPort("bond0"), config)
    eth = [Pif("eth0"), Pif("eth1")]
    for p in eth:
        lag.add_member(p)
    lag.clock_now(clock.now_ns)
    sw = StandardSwitch("xenbr0", clock=clock)
    sw.add_uplink(lag.port)
    sw.add_port_group(PortGroup("xenbr0"))
    vifs = [sw.attach(Vif(i + 1, 0, mac=m), "xenbr0") for i, m in enumerate(VMS[:n_vms])]
    if vlan_vm:
        xapi = StandardSwitch("xapi0", clock=clock)
        xapi.add_uplink(lag.port.vlan(5))
        xapi.add_port_group(PortGroup("xapi0"))
        vifs.append(xapi.attach(Vif(20, 0, mac=bytes.fromhex("00163e0000f5")), "xapi0"))
    for v in vifs:
        v.vnic.send(fr.ethernet(PEER, v.mac, 0x88B5, bytes(46)))
    for p in eth:
        sent(p)
    return lag, eth, vifs


def where_data_goes(lag: Lag, eth: list[Pif], mac: bytes, vid: int = 0) -> Pif:
    f = fr.ethernet(PEER, mac, 0x88B5, bytes(46))
    if vid:
        f = fr.push_tag(f, vid)
    lag.port.transmit(f)
    (out,) = [p for p in eth if sent(p)]
    return out


def test_the_learning_packet_is_ovs_compose_rarp() -> None:
    mac = bytes.fromhex("00163e123456")
    f = rarp_learning_packet(mac)
    assert len(f) == 60 and f[:6] == b"\xff" * 6 and f[6:12] == mac and f[12:14] == b"\x80\x35"
    # htype 1, ptype IPv4, hlen 6, plen 4, op 3 (request reverse), sha, spa 0, tha, tpa 0
    assert f[14:22] == bytes.fromhex("0001080006040003")
    assert f[22:28] == mac and f[28:32] == bytes(4) and f[32:38] == mac and f[38:42] == bytes(4)
    t = rarp_learning_packet(mac, 5)
    assert fr.parse(t).vid == 5 and t[:12] + t[16:] == f


@pytest.mark.parametrize("mode", ["balance-slb", "active-backup"])
def test_a_failover_announces_every_mac_behind_the_bond_out_its_new_member(mode: str) -> None:
    lag, eth, _vifs = bonded_host(LagConfig(mode=mode))
    assert lag.status()["active"] == "eth0"
    eth[0].set_link(False)
    got = sent(eth[1])
    assert sent(eth[0]) == []
    expected = {rarp_learning_packet(m) for m in VMS} | {
        rarp_learning_packet(bytes.fromhex("00163e0000f5"), 5)}
    assert set(got) == expected and len(got) == len(expected) == lag.learning_packets_sent
    assert lag.failovers == 1


def test_with_both_members_up_each_rarp_leaves_by_its_macs_own_member() -> None:
    lag, eth, _ = bonded_host(LagConfig(mode="balance-slb"), vlan_vm=False)
    pairs = lag.learning_packets()
    assert len(pairs) == len(VMS)
    assert {p.name for p, _ in pairs} == {"eth0", "eth1"}  # 8 MACs spread over both
    for member, frame in pairs:
        assert where_data_goes(lag, eth, frame[6:12]) is member


def test_rebalancing_moves_buckets_without_learning_packets_as_ovs() -> None:
    """OVS `bond_rebalance` only shifts hashes (`bond_shift_load`); the moved MAC's own
    frames, which made the bucket worth moving, teach the physical switch its new port."""
    lag, eth, vifs = bonded_host(LagConfig(mode="balance-slb"), vlan_vm=False)
    for _ in range(50):
        for v in vifs[:4]:
            v.vnic.send(fr.ethernet(PEER, v.mac, 0x88B5, bytes(1000)))
    for p in eth:
        sent(p)
    before = {m: where_data_goes(lag, eth, m).name for m in VMS}
    assert lag.rebalance() >= 1
    after = {m: where_data_goes(lag, eth, m).name for m in VMS}
    assert before != after and lag.learning_packets_sent == 0
    assert all(f[12:14] != b"\x80\x35" for p in eth for f in sent(p))


def test_a_negotiated_lacp_bond_sends_no_learning_packets() -> None:
    lag, eth, _ = bonded_host(LagConfig(mode="lacp", rate="fast"), vlan_vm=False)
    assert lag.learning_packets() == []
    eth[0].set_link(False)
    assert lag.learning_packets_sent == 0


def partner_pdu(port: int, about: LacpInfo) -> bytes:
    state = ACTIVITY | AGGREGATION | SYNC | 0x30
    return encode_lacpdu(PEER_SYS, Lacpdu(LacpInfo(1, PEER_SYS, 9, 1, port, state), about))


@pytest.mark.parametrize(("fallback", "up", "carrier"), [
    (False, False, None),  # OVS default: LACP configured, never negotiated: the bond is down
    (True, True, "eth0"),  # lacp-fallback-ab: active-backup on the first member
])
def test_a_partner_that_never_speaks_lacp(fallback: bool, up: bool, carrier: str | None
                                          ) -> None:
    lag, eth, vifs = bonded_host(LagConfig(mode="lacp", lacp_fallback_ab=fallback),
                                 vlan_vm=False)
    assert lag.port.link_up is up
    assert lag.status()["fallback_ab"] is fallback
    for v in vifs:
        v.vnic.send(fr.ethernet(PEER, v.mac, 0x88B5, bytes(46)))
    data = {p.name: [f for f in sent(p) if f[12:14] != b"\x88\x09"] for p in eth}
    if carrier is None:
        assert data == {"eth0": [], "eth1": []}
        return
    assert len(data[carrier]) == len(vifs) and not data["eth1"]
    assert lag.choice_text() == "lacp-fallback-ab (no LACP partner): the active member"
    # active-backup's admission: the backup takes nothing, the active member everything
    bc = fr.ethernet(fr.BROADCAST, PEER, 0x88B5, bytes(46))
    eth[1].receive(bc)
    eth[0].receive(bc)
    assert eth[1].counters.drops == {"lag-not-collecting": 1}
    assert all(len(sent(v)) == 1 for v in vifs)
    # the active member fails: the other takes over and announces the MACs (OVS
    # may_send_learning_packets: fallback_ab and LACP configured)
    eth[0].set_link(False)
    got = sent(eth[1])
    assert {rarp_learning_packet(m) for m in VMS} <= set(got)


def test_the_first_lacpdu_ends_the_fallback() -> None:
    lag, eth, _vifs = bonded_host(LagConfig(mode="lacp", rate="fast", lacp_fallback_ab=True),
                                 vlan_vm=False)
    assert lag.status()["fallback_ab"] is True and lag.distributing == (eth[0],)
    for _ in range(2):  # the partner speaks LACP now: both members aggregate
        for i, p in enumerate(eth):
            p.receive(partner_pdu(i + 1, lag.actor_info(lag.members[i])))
    assert lag.status()["fallback_ab"] is False and lag.distributing == tuple(eth)
    # ... and when that partner goes silent for good, the bond falls back again
    t0 = lag.members[0].current_until  # 3 s after the last PDU (fast): EXPIRED, then
    lag.tick(t0)  # DEFAULTED 3 s later
    lag.tick(t0 + 3 * NS_PER_S)
    assert lag.status()["fallback_ab"] is True and len(lag.distributing) == 1


def test_fallback_is_ignored_outside_lacp_mode_and_works_again_back_in_it() -> None:
    """OVS reads lacp-fallback-ab only while LACP runs: `xe bond-set-mode` to balance-slb and
    back to lacp keeps it."""
    lag, eth, _ = bonded_host(LagConfig(mode="balance-slb", lacp_fallback_ab=True),
                              vlan_vm=False)
    assert lag.distributing == tuple(eth) and lag.status()["fallback_ab"] is False
    lag.reconfigure(LagConfig(mode="lacp", lacp_fallback_ab=True), 0)
    assert lag.distributing == (eth[0],) and lag.status()["fallback_ab"] is True
    lag.reconfigure(LagConfig(mode="lacp"), 0)  # fallback switched off live: the bond goes down
    assert lag.distributing == () and not lag.port.link_up
