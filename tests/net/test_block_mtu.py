"""Port blocking (DVPortSetting.blocked) and MTU end to end: vNIC/VIF, port group, switch, PIF
and physical port MTUs, a frame too big for a hop dropped and counted at that hop."""
from __future__ import annotations

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.policy import VlanPolicy
from netsim.dataplane.port import Pif, Port, Vif
from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch
from netsim.errors import ConfigError

from .conftest import BCAST, A, B, C, make, sent

PEER = bytes.fromhex("020000000099")


def vss(*, vm_mtu: int = 1500, pif_mtu: int = 1500, sw_mtu: int | None = None,
        pg_mtu: int | None = None, blocked: bool = False):
    sw = StandardSwitch("vs", clock=ManualClock(), mtu=sw_mtu)
    sw.add_port_group(PortGroup("pg", vlan=5, mtu=pg_mtu, blocked=blocked))
    sw.add_port_group(PortGroup("open", vlan=5))
    a = sw.attach(Vif(1, 0, mac=A, mtu=vm_mtu), "pg")
    b = sw.attach(Vif(2, 0, mac=B, mtu=vm_mtu), "open")
    up = sw.add_uplink(Pif("eth0", mtu=pif_mtu))
    return sw, a, b, up


# (vNIC MTU, PIF MTU, switch MTU, port group MTU, payload) → where it ends
MTU_CASES = [
    (1500, 1500, None, None, 1500, "out"),  # full-size frame leaves tagged (1518 bytes)
    (1500, 1500, None, None, 1501, "vif-oversize"),  # the guest sent more than its MTU
    (9000, 1500, None, None, 9000, "uplink-oversize"),  # jumbo VM, standard uplink
    (9000, 1500, None, None, 1500, "out"),
    (9000, 9000, None, None, 9000, "out"),  # jumbo end to end
    (9000, 9000, 1500, None, 9000, "vif-oversize"),  # the vSwitch's MTU caps its ports
    (9000, 9000, 9000, 1500, 9000, "vif-oversize"),  # and so does the network's MTU
    (9000, 9000, 9000, 1500, 1500, "out"),
]


@pytest.mark.parametrize(("vm_mtu", "pif_mtu", "sw_mtu", "pg_mtu", "payload", "where"),
                         MTU_CASES)
def test_a_frame_bigger_than_a_hops_mtu_is_dropped_and_counted_there(
        vm_mtu: int, pif_mtu: int, sw_mtu: int | None, pg_mtu: int | None, payload: int,
        where: str) -> None:
    _, a, _, up = vss(vm_mtu=vm_mtu, pif_mtu=pif_mtu, sw_mtu=sw_mtu, pg_mtu=pg_mtu)
    up.receive(make(A, PEER, vid=5))  # PEER learned on the uplink
    sent(a)
    a.vnic.send(make(PEER, A, size=14 + payload))
    out = sent(up)
    if where == "out":
        assert [len(f) for f in out] == [18 + payload]
        assert up.counters.dropped == a.counters.dropped == 0
    else:
        assert out == []
        port = a if where == "vif-oversize" else up
        assert port.counters.drops == {"oversize": 1}


def test_a_jumbo_frame_from_the_uplink_stops_at_a_standard_vnic() -> None:
    _, a, b, up = vss(vm_mtu=1500, pif_mtu=9000)
    a.vnic.send(make(BCAST, A))
    b.vnic.send(make(BCAST, B))
    for p in (a, b, up):
        sent(p)
    up.receive(make(A, PEER, vid=5, size=9014))
    up.receive(make(B, PEER, vid=5, size=1514))
    assert sent(a) == [] and a.counters.drops == {"oversize": 1}
    assert [len(f) for f in sent(b)] == [1514]


def test_physical_switch_ports_have_their_own_mtu() -> None:
    sw = PhysicalSwitch("tor", clock=ManualClock())
    big = sw.add_port(Port("big", mtu=9000), VlanPolicy.trunk())
    small = sw.add_port(Port("small", mtu=1500), VlanPolicy.trunk())
    also_big = sw.add_port(Port("big2", mtu=9000), VlanPolicy.trunk())
    big.receive(make(BCAST, A, vid=7, size=9014))
    assert sent(small) == [] and small.counters.drops == {"oversize": 1}
    assert [len(f) for f in sent(also_big)] == [9018]
    sw.mtu = 1500  # the whole switch back to standard frames: refused where they enter
    big.receive(make(BCAST, A, vid=7, size=9014))
    assert big.counters.drops == {"oversize": 1} and sent(also_big) == []


@pytest.mark.parametrize("bad", [67, 9217, True, "9000"])
def test_bad_mtus_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="mtu"):
        StandardSwitch("vs", mtu=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mtu"):
        PortGroup("pg", mtu=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- blocking
def test_a_blocked_port_passes_nothing_either_way_and_counts_it() -> None:
    sw, a, b, up = vss(blocked=True)
    c = sw.attach(Vif(3, 0, mac=C), "open")
    a.vnic.send(make(BCAST, A))  # out of the blocked port: nothing
    assert sent(b) == [] and sent(up) == [] and a.counters.drops == {"blocked": 1}
    assert all(e.mac != "00:16:3e:00:00:0a" for e in sw.mac_entries())  # not learned
    b.vnic.send(make(BCAST, B))  # into the blocked port: nothing, the others still get it
    assert sent(a) == [] and a.counters.drops == {"blocked": 2}
    assert len(sent(c)) == 1 and len(sent(up)) == 1
    up.receive(make(A, PEER, vid=5))  # unknown unicast for A from the wire
    assert sent(a) == [] and a.counters.drops == {"blocked": 3}


def test_unblocking_the_port_group_lets_frames_through_again() -> None:
    sw, a, b, up = vss(blocked=True)
    sw.update_port_group(PortGroup("pg", vlan=5))
    a.vnic.send(make(BCAST, A))
    assert len(sent(b)) == 1 and len(sent(up)) == 1


@pytest.mark.parametrize("which", ["vm", "uplink"])
def test_block_one_port_at_run_time(which: str) -> None:
    sw, a, b, up = vss()
    port = b if which == "vm" else up
    sw.block(port)
    a.vnic.send(make(BCAST, A))
    assert sent(port) == [] and port.counters.drops == {"blocked": 1}
    other = up if which == "vm" else b
    assert len(sent(other)) == 1
    sw.block(port, False)
    a.vnic.send(make(BCAST, A))
    assert len(sent(port)) == 1
