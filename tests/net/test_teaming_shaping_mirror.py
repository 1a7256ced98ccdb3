"""Pipeline hooks: NIC teaming (port id, active/standby, failover), shaping, mirroring."""
from __future__ import annotations

from netsim.clock import ManualClock
from netsim.dataplane.policy import ShapingPolicy, TeamingPolicy
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch

from .conftest import BCAST, make, sent


def team(n_vms: int = 4, policy: TeamingPolicy | None = None):
    sw = StandardSwitch("vs", clock=ManualClock(), teaming=policy)
    sw.add_port_group(PortGroup("pg", vlan=5))
    vms = [sw.attach(Vif(i + 1, 0, mac=bytes([0, 0x16, 0x3E, 0, 0, i + 1])), "pg")
           for i in range(n_vms)]
    ups = [sw.add_uplink(Pif(f"vmnic{i}")) for i in range(2)]
    if policy is not None:
        sw.teaming = policy
    return sw, vms, ups


def test_route_based_on_originating_port_spreads_and_sticks() -> None:
    _, vms, ups = team()
    for _ in range(3):
        for vm in vms:
            vm.vnic.send(make(BCAST, vm.vnic.mac))
    by_uplink = [{f[6:12] for f in sent(u)} for u in ups]
    assert all(len(s) == 2 for s in by_uplink)  # 4 VMs over 2 uplinks, each VM on one
    assert not by_uplink[0] & by_uplink[1]


def test_failover_to_the_other_uplink_on_link_down_and_back() -> None:
    sw, vms, ups = team()
    vm = vms[0]
    first = sw.uplink_for(vm)
    other = ups[1] if first is ups[0] else ups[0]
    first.set_link(False)
    vm.vnic.send(make(BCAST, vm.vnic.mac))
    moved = {p.vnic.mac for p in vms if p.sw_id % 2 == vm.sw_id % 2}  # pinned like vm
    *rarps, frame = sent(other)  # notify switches: a RARP per moved vNIC, then the frame
    assert {r[6:12] for r in rarps} == moved and len(rarps) == 2
    assert all(r[16:18] == b"\x80\x35" for r in rarps)
    assert frame[6:12] == vm.vnic.mac and sent(first) == []
    first.set_link(True)
    assert sw.uplink_for(vm) is first
    assert {f[6:12] for f in sent(first)} == moved  # failback: announced again


def test_standby_only_when_no_active_is_up() -> None:
    sw, vms, ups = team(policy=TeamingPolicy(active=("vmnic0",), standby=("vmnic1",)))
    for vm in vms:
        vm.vnic.send(make(BCAST, vm.vnic.mac))
    assert len(sent(ups[0])) == 4 and sent(ups[1]) == []
    ups[0].set_link(False)
    vms[0].vnic.send(make(BCAST, vms[0].vnic.mac))
    assert len(sent(ups[1])) == 1 + 4  # a RARP for each of the 4 vNICs that moved, the frame
    ups[1].set_link(False)
    vms[0].vnic.send(make(BCAST, vms[0].vnic.mac))
    assert vms[0].counters.drops == {}  # other VMs still got the broadcast
    assert sw.uplink_for(vms[0]) is None


def test_frames_from_one_uplink_never_leave_by_another() -> None:
    _, vms, ups = team()
    # The physical switch floods a broadcast to both active uplinks: each VM gets exactly one
    # copy, through the uplink it is pinned to (ESXi's reverse filter), and nothing leaves again.
    for up in reversed(ups):  # 02:..:01 is learned last on ups[0]
        up.receive(make(BCAST, bytes.fromhex("020000000001"), vid=5))
    assert sent(ups[0]) == [] and sent(ups[1]) == []
    assert all(len(sent(vm)) == 1 for vm in vms)
    ups[1].receive(make(bytes.fromhex("020000000001"), bytes.fromhex("020000000002"), vid=5))
    assert sent(ups[0]) == [] and ups[1].counters.drops == {"uplink-to-uplink": 1}


def test_own_frame_reflected_back_by_the_physical_network_is_dropped() -> None:
    _, vms, ups = team()
    vms[0].vnic.send(make(BCAST, vms[0].vnic.mac))
    ups[1].receive(make(BCAST, vms[0].vnic.mac, vid=5))
    assert ups[1].counters.drops == {"reflected": 1}


def test_shaping_polices_vm_egress_on_the_clock() -> None:
    clock = ManualClock()
    sw = StandardSwitch("vs", clock=clock)
    # 8 kbit/s = 1000 B/s average, burst 1000 B; peak 80 kbit/s (peak bucket ≥ one big frame)
    sw.add_port_group(PortGroup("pg", shaping=ShapingPolicy(8000, 80000, 1000)))
    vm = sw.attach(Vif(1, 0, mac="00:16:3e:00:00:01"), "pg")
    up = sw.add_uplink(Pif("eth0"))
    for _ in range(20):
        vm.vnic.send(make(BCAST, vm.vnic.mac, size=100))
    assert len(sent(up)) == 10 and vm.counters.drops == {"shaped": 10}
    clock.advance(0.5)  # 500 bytes earned
    for _ in range(20):
        vm.vnic.send(make(BCAST, vm.vnic.mac, size=100))
    assert len(sent(up)) == 5


def test_mirror_copies_both_directions_to_the_destination() -> None:
    sw = StandardSwitch("vs", clock=ManualClock())
    sw.add_port_group(PortGroup("pg"))
    a = sw.attach(Vif(1, 0, mac="00:16:3e:00:00:01"), "pg")
    b = sw.attach(Vif(2, 0, mac="00:16:3e:00:00:02"), "pg")
    from netsim.dataplane.policy import SecurityPolicy

    sw.add_port_group(PortGroup("span", vlan=999, security=SecurityPolicy(promiscuous=True)))
    mon = sw.attach(Vif(3, 0, mac="00:16:3e:00:00:03"), "span")
    sw.mirror([a], mon)
    a.vnic.send(make(BCAST, a.vnic.mac))
    b.vnic.send(make(a.vnic.mac, b.vnic.mac))
    assert len(sent(mon)) == 2  # a's ingress and a's egress
    assert len(sent(a)) == 1 and len(sent(b)) == 1
