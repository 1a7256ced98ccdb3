"""vSphere security policy: promiscuous mode, MAC address changes, forged transmits."""
from __future__ import annotations

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.policy import SecurityPolicy
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch

from .conftest import BCAST, A, B, C, make, sent

X = bytes.fromhex("00163e0000ee")


def build(security: SecurityPolicy, vlan: int = 5):
    sw = StandardSwitch("vs", clock=ManualClock())
    sw.add_port_group(PortGroup("pg", vlan=vlan, security=security))
    sw.add_port_group(PortGroup("other", vlan=vlan + 1, security=SecurityPolicy(promiscuous=True)))
    a = sw.attach(Vif(1, 0, mac=A), "pg")
    b = sw.attach(Vif(2, 0, mac=B), "pg")
    c = sw.attach(Vif(3, 0, mac=C), "pg")
    other = sw.attach(Vif(4, 0, mac=X), "other")
    up = sw.add_uplink(Pif("eth0"))
    return sw, a, b, c, other, up


def test_defaults_are_the_vss_ones() -> None:
    assert SecurityPolicy() == SecurityPolicy(promiscuous=False, mac_changes=True,
                                              forged_transmits=True)


def test_promiscuous_reject_gets_only_own_unicast_and_broadcast() -> None:
    _, a, b, c, other, up = build(SecurityPolicy())
    a.vnic.send(make(B, A))  # unknown B: flooded, but only B's vNIC takes it
    assert len(sent(b)) == 1 and sent(c) == [] and len(sent(up)) == 1
    assert c.counters.drops == {"not-promiscuous": 1}
    a.vnic.send(make(BCAST, A))
    assert len(sent(b)) == 1 and len(sent(c)) == 1
    assert sent(other) == []


def test_promiscuous_accept_sees_all_of_its_vlan_but_never_other_vlans() -> None:
    _, a, b, c, other, up = build(SecurityPolicy(promiscuous=True))
    b.vnic.send(make(BCAST, B))
    for p in (a, c, up):
        sent(p)
    a.vnic.send(make(B, A))  # known unicast a→b: c (promiscuous) gets a copy
    assert len(sent(b)) == 1 and len(sent(c)) == 1
    up.receive(make(B, bytes.fromhex("020000000001"), vid=5))
    assert len(sent(b)) == 1 and len(sent(c)) == 1 and len(sent(a)) == 1
    assert sent(other) == []  # other VLAN, promiscuous or not


def test_forged_transmits_reject_drops_foreign_source() -> None:
    _, a, b, _, _, up = build(SecurityPolicy(forged_transmits=False))
    a.vnic.send(make(BCAST, X))
    assert sent(b) == [] and sent(up) == []
    assert a.counters.drops == {"forged-source": 1}
    a.vnic.send(make(BCAST, A))
    assert len(sent(b)) == 1


def test_forged_transmits_accept_lets_it_through_and_learns_it() -> None:
    sw, a, b, _, _, up = build(SecurityPolicy())
    a.vnic.send(make(BCAST, X))
    assert len(sent(b)) == 1 and len(sent(up)) == 1
    assert sw.mac_table.lookup(5, X, 0) is a
    # ...but a non-promiscuous vNIC still only accepts frames for its own MAC
    b.vnic.send(make(X, B))
    assert sent(a) == [] and a.counters.drops == {"not-promiscuous": 1}


@pytest.mark.parametrize(("mac_changes", "delivered"), [(False, 0), (True, 1)])
def test_mac_address_changes(mac_changes: bool, delivered: int) -> None:
    _, a, b, _, _, _ = build(SecurityPolicy(mac_changes=mac_changes))
    a.vnic.set_effective_mac(X)
    b.vnic.send(make(X, B))  # to the new MAC
    b.vnic.send(make(BCAST, B))
    got = sent(a)
    if mac_changes:
        assert len(got) == 2  # effective MAC is honoured
    else:
        assert got == [] and a.counters.drops == {"mac-changed": 2}
    a.vnic.set_effective_mac(A)
    b.vnic.send(make(BCAST, B))
    assert len(sent(a)) == 1


def test_vnic_mac_must_be_unicast() -> None:
    from netsim.errors import ConfigError

    with pytest.raises(ConfigError, match="multicast"):
        Vif(1, 0, mac="01:00:5e:00:00:01")
