"""Bad frames are dropped and counted, bad configuration is refused naming the field."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.clock import ManualClock
from netsim.dataplane.policy import SecurityPolicy, ShapingPolicy, TeamingPolicy
from netsim.dataplane.policy import VlanPolicy as V
from netsim.dataplane.port import Pif, Port, Vif
from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch
from netsim.errors import ConfigError

from .conftest import BCAST, A, make, sent


def two_port_switch() -> tuple[Port, Port]:
    sw = PhysicalSwitch("s", clock=ManualClock())
    return sw.add_port("in", V.trunk()), sw.add_port("out", V.trunk())


@pytest.mark.parametrize(("frame", "reason"), [
    (b"", "runt"),
    (b"\xff" * 13, "runt"),
    (BCAST + A + b"\x81\x00", "malformed"),  # TPID, then cut inside the tag
    (BCAST + A + b"\x81\x00\x00\x05\x08", "malformed"),
    (make(BCAST, A, size=1515), "oversize"),
    (make(BCAST, A, size=1515, vid=5), "oversize"),
    (make(BCAST, bytes.fromhex("010000000001")), "malformed"),  # multicast source
])
def test_bad_frames_are_counted_not_raised(frame: bytes, reason: str) -> None:
    p_in, p_out = two_port_switch()
    p_in.receive(frame)
    assert sent(p_out) == []
    assert p_in.counters.drops == {reason: 1}
    assert p_in.counters.rx_frames == 1


def test_mtu_sized_frames_pass_with_and_without_tag() -> None:
    p_in, p_out = two_port_switch()
    p_in.receive(make(BCAST, A, size=1514))
    p_in.receive(make(BCAST, A, size=1514, vid=5))
    assert [len(f) for f in sent(p_out)] == [1514, 1518]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_arbitrary_bytes_never_raise_out_of_the_pipeline(data: bytes) -> None:
    sw = StandardSwitch("vs", clock=ManualClock())
    sw.add_port_group(PortGroup("g", vlan=4095, security=SecurityPolicy(forged_transmits=False)))
    vm = sw.attach(Vif(1, 0, mac=A), "g")
    up = sw.add_uplink(Pif("eth0"))
    vm.vnic.send(data)
    up.receive(data)
    total = sum(p.counters.tx_frames + p.counters.dropped for p in (vm, up))
    assert total >= 1 or len(data) >= 14  # either delivered somewhere or counted


def test_full_queue_drops_and_counts() -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    p_in = sw.add_port("in", V.access(1))
    p_out = sw.add_port(Port("out", queue_size=2), V.access(1))
    for _ in range(5):
        p_in.receive(make(BCAST, A))
    assert len(p_out.queue) == 2 and p_out.counters.drops == {"queue-full": 3}
    assert p_out.counters.tx_frames == 2


def test_unattached_or_down_port_counts_link_down() -> None:
    loose = Port("loose")
    loose.receive(make(BCAST, A))
    assert loose.counters.drops == {"link-down": 1}
    p_in, p_out = two_port_switch()
    p_out.set_link(False)
    p_in.receive(make(BCAST, A))
    assert p_out.counters.drops == {"link-down": 1}


@pytest.mark.parametrize(("build", "match"), [
    (lambda: V.access(4096), "vlan: VLAN ID 4096 out of range 0-4094"),
    (lambda: V.access(-1), "out of range"),
    (lambda: V.trunk(5, 4095), "trunks: VLAN ID 4095"),
    (lambda: V(mode="hybrid"), "vlan_mode: 'hybrid' is not one of"),
    (lambda: V(mode="access", vlan=5, trunks=frozenset({6})), "access port carries only"),
    (lambda: PortGroup("pg", vlan=4096), "port group 'pg': vlan: VLAN ID 4096 out of range 0-4095"),
    (lambda: PortGroup("", vlan=1), "port group name"),
    (lambda: ShapingPolicy(average_bps=10, peak_bps=5, burst_bytes=10), "peak_bps"),
    (lambda: ShapingPolicy(average_bps=0, peak_bps=5, burst_bytes=10), "average_bps"),
    (lambda: TeamingPolicy(active=("eth0",), standby=("eth0",)), "both active and standby"),
    (lambda: TeamingPolicy(load_balancing="round-robin"), "load_balancing"),
    (lambda: Port("p", mtu=10), "mtu"),
    (lambda: Port("p", queue_size=0), "queue_size"),
    (lambda: Vif(-1, 0, mac=A), "domid"),
    (lambda: Pif("eth0").vlan(4096), "VLAN PIF: VLAN ID 4096"),
    (lambda: Pif("eth0").vlan(0), "needs a VLAN ID 1-4094"),
])
def test_bad_config_is_refused_naming_the_field(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()


def test_switch_config_errors() -> None:
    sw = StandardSwitch("vs", clock=ManualClock())
    sw.add_port_group(PortGroup("lan"))
    vif = Vif(1, 0, mac=A)
    with pytest.raises(ConfigError, match=r"unknown port group 'wan' \(known: lan\)"):
        sw.attach(vif, "wan")
    sw.attach(vif, "lan")
    with pytest.raises(ConfigError, match="already attached"):
        sw.attach(vif, "lan")
    with pytest.raises(ConfigError, match="already exists"):
        sw.add_port_group(PortGroup("lan"))
    with pytest.raises(ConfigError, match="uplinks go through add_uplink"):
        sw.attach(Pif("eth1"), "lan")  # type: ignore[arg-type]
    sw.add_uplink(Pif("eth0"))
    with pytest.raises(ConfigError, match="teaming names uplink 'eth9'"):
        sw.teaming = TeamingPolicy(active=("eth9",))
