"""NIC teaming policies of `HostNicTeamingPolicy`: IP hash, source MAC hash, explicit failover
order, notify switches (RARP on the new uplink), failback yes/no - table-driven."""
from __future__ import annotations

import ipaddress

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.policy import LoadBalancing, SecurityPolicy, TeamingPolicy
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.dataplane.teaming import ETHERTYPE_RARP, ip_hash_index, rarp_announce
from netsim.wire import frame as fr

from .conftest import BCAST, make, sent

VM = bytes.fromhex("00163e000001")
PEER = bytes.fromhex("020000000099")


def build(policy: TeamingPolicy, n_up: int = 4, n_vms: int = 1, forged_ok: bool = False):
    sw = StandardSwitch("vs", clock=ManualClock())
    ups = [sw.add_uplink(Pif(f"vmnic{i}")) for i in range(n_up)]
    sw.add_port_group(PortGroup("pg", vlan=5, teaming=policy,
                                security=SecurityPolicy(forged_transmits=forged_ok)))
    vms = [sw.attach(Vif(i + 1, 0, mac=VM[:5] + bytes([i + 1])), "pg") for i in range(n_vms)]
    return sw, vms, ups


def ipv4(dst_mac: bytes, src_mac: bytes, src: str, dst: str) -> bytes:
    ip = (bytes((0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0))
          + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed)
    return fr.ethernet(dst_mac, src_mac, fr.ETHERTYPE_IPV4, ip + bytes(26))


def which(ups: list[Pif]) -> list[int]:
    """Index of every uplink that sent something (draining them)."""
    return [i for i, u in enumerate(ups) if sent(u)]


@pytest.mark.parametrize(
    ("src", "dst", "uplink"),
    [  # (last octet of src XOR last octet of dst) mod 4
        ("10.0.0.1", "10.0.0.2", 3), ("10.0.0.1", "10.0.0.3", 2),
        ("10.0.0.1", "10.0.0.5", 0), ("10.0.0.1", "10.9.9.4", 1),
        ("10.0.0.7", "192.168.1.7", 0), ("172.16.0.255", "10.0.0.0", 3),
    ],
)
@pytest.mark.parametrize("known", [False, True], ids=["flood", "unicast"])
def test_ip_hash_picks_the_uplink_from_the_two_last_octets(
        src: str, dst: str, uplink: int, known: bool) -> None:
    _sw, (vm,), ups = build(TeamingPolicy(load_balancing=LoadBalancing.IP_HASH))
    if known:
        ups[0].receive(make(VM[:5] + b"\x01", PEER, vid=5))
        sent(vm)
    vm.vnic.send(ipv4(PEER, vm.mac, src, dst))
    assert which(ups) == [uplink]


def test_ip_hash_of_non_ip_frames_reads_the_same_offsets() -> None:
    f = make(BCAST, VM, ethertype=0x88B5)
    f = f[:29] + b"\x06" + f[30:33] + b"\x03" + f[34:]
    assert ip_hash_index(f, 4) == 5 % 4
    _sw, (vm,), ups = build(TeamingPolicy(load_balancing=LoadBalancing.IP_HASH))
    vm.vnic.send(f[:6] + vm.mac + f[12:])
    assert which(ups) == [1]


def test_ip_hash_spreads_one_vm_over_every_uplink_and_takes_floods_from_any() -> None:
    sw, (vm,), ups = build(TeamingPolicy(load_balancing=LoadBalancing.IP_HASH))
    for last in range(8):
        vm.vnic.send(ipv4(PEER, vm.mac, "10.0.0.8", f"10.0.1.{last}"))
    assert [len(sent(u)) for u in ups] == [2, 2, 2, 2]
    assert sw.uplinks_in_use() == set(ups)
    for u in ups:  # the LAG upstream sends a flood down one member, whichever
        u.receive(make(BCAST, PEER, vid=5))
        assert len(sent(vm)) == 1


@pytest.mark.parametrize("last", [0x10, 0x11, 0x12, 0x17])
def test_source_mac_hash_follows_the_frames_source_mac(last: int) -> None:
    _sw, (vm,), ups = build(TeamingPolicy(load_balancing=LoadBalancing.SRC_MAC), forged_ok=True)
    vm.vnic.send(make(BCAST, VM[:5] + bytes([last])))
    assert which(ups) == [last % 4]


EXPLICIT = TeamingPolicy(active=("vmnic2", "vmnic0"), standby=("vmnic3", "vmnic1"),
                         load_balancing=LoadBalancing.EXPLICIT_FAILOVER)


@pytest.mark.parametrize(
    ("down", "uplink"),
    [((), 2), ((2,), 0), ((2, 0), 3), ((2, 0, 3), 1), ((0,), 2), ((3,), 2),
     ((2, 0, 3, 1), None)],
)
def test_explicit_failover_order(down: tuple[int, ...], uplink: int | None) -> None:
    _sw, vms, ups = build(EXPLICIT, n_vms=3)
    for i in down:
        ups[i].set_link(False)
    for u in ups:
        sent(u)
    for vm in vms:
        vm.vnic.send(make(BCAST, vm.mac))
    got = [i for i, u in enumerate(ups) if [f for f in sent(u) if f[16:18] != b"\x80\x35"]]
    assert got == ([] if uplink is None else [uplink])


@pytest.mark.parametrize(
    ("failback", "notify", "after_recovery", "rarps"),
    [
        (True, True, 0, [("vmnic1", 1), ("vmnic0", 1)]),  # moves away and back, announced twice
        (False, True, 1, [("vmnic1", 1)]),  # rollingOrder: stays on vmnic1, nothing to announce
        (True, False, 0, []),  # notify switches off: silent failovers
        (False, False, 1, []),
    ],
)
def test_failover_notify_and_failback(failback: bool, notify: bool, after_recovery: int,
                                      rarps: list[tuple[str, int]]) -> None:
    policy = TeamingPolicy(active=("vmnic0",), standby=("vmnic1",), failback=failback,
                           notify_switches=notify)
    sw, (vm,), ups = build(policy, n_up=2)
    vm.vnic.send(make(BCAST, vm.mac))
    assert which(ups) == [0]
    seen: list[tuple[str, int]] = []

    def rarps_on(u: Pif) -> None:
        for f in sent(u):
            assert f == fr.push_tag(rarp_announce(vm.mac), 5)  # tagged into the vNIC's VLAN
            seen.append((u.name, 1))

    ups[0].set_link(False)
    rarps_on(ups[1])
    ups[0].set_link(True)
    rarps_on(ups[0])
    rarps_on(ups[1])
    assert seen == rarps
    assert sw.notifications == len(rarps)
    vm.vnic.send(make(BCAST, vm.mac))
    assert which(ups) == [after_recovery]


def test_rarp_is_what_esxi_sends() -> None:
    f = rarp_announce(VM)
    assert len(f) == 60 and f[:6] == BCAST and f[6:12] == VM
    assert int.from_bytes(f[12:14], "big") == ETHERTYPE_RARP
    assert f[20:22] == b"\x00\x03" and f[22:28] == VM and f[32:38] == VM


def test_bad_teaming_flags_are_refused() -> None:
    from netsim.errors import ConfigError
    with pytest.raises(ConfigError, match=r"teaming\.failback"):
        TeamingPolicy(failback="no")  # type: ignore[arg-type]
