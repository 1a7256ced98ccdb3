"""NIC teaming overridden per port group (vSphere's port group "override" of the vSwitch policy).

Two groups on one switch with two uplinks: "web" has vmnic0 active / vmnic1 standby, "db" the
reverse; the switch itself keeps its own policy for groups without an override.
"""
from __future__ import annotations

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.policy import LoadBalancing, TeamingPolicy
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.errors import ConfigError

from .conftest import BCAST, make, sent

WEB = TeamingPolicy(active=("vmnic0",), standby=("vmnic1",),
                    load_balancing=LoadBalancing.EXPLICIT_FAILOVER)
DB = TeamingPolicy(active=("vmnic1",), standby=("vmnic0",),
                   load_balancing=LoadBalancing.EXPLICIT_FAILOVER)
PEER = bytes.fromhex("020000000001")


def build(switch_policy: TeamingPolicy | None = None):
    sw = StandardSwitch("vs", clock=ManualClock(), teaming=switch_policy)
    ups = [sw.add_uplink(Pif(f"vmnic{i}")) for i in range(2)]
    sw.add_port_group(PortGroup("web", vlan=5, teaming=WEB))
    sw.add_port_group(PortGroup("db", vlan=5, teaming=DB))
    sw.add_port_group(PortGroup("plain", vlan=5))
    web = [sw.attach(Vif(i + 1, 0, mac=bytes([0, 0x16, 0x3E, 0, 1, i])), "web") for i in range(2)]
    db = [sw.attach(Vif(i + 10, 0, mac=bytes([0, 0x16, 0x3E, 0, 2, i])), "db") for i in range(2)]
    return sw, ups, web, db


def test_each_group_leaves_by_its_own_active_uplink() -> None:
    sw, ups, web, db = build()
    for p in (*web, *db):
        p.vnic.send(make(BCAST, p.vnic.mac))
    assert {f[6:12] for f in sent(ups[0])} == {p.vnic.mac for p in web}
    assert {f[6:12] for f in sent(ups[1])} == {p.vnic.mac for p in db}
    assert sw.uplinks_in_use() == frozenset(ups)


def test_failover_is_per_group() -> None:
    sw, ups, web, db = build()
    ups[0].set_link(False)  # web's active uplink goes down: web fails over, db does not move
    assert all(sw.uplink_for(p) is ups[1] for p in (*web, *db))
    ups[0].set_link(True)
    ups[1].set_link(False)  # db's active uplink goes down: only db moves
    assert all(sw.uplink_for(p) is ups[0] for p in (*web, *db))
    ups[1].set_link(True)
    assert [sw.uplink_for(p) for p in (*web, *db)] == [ups[0]] * 2 + [ups[1]] * 2


def test_a_flood_from_an_uplink_reaches_only_the_ports_pinned_to_it() -> None:
    _, ups, web, db = build()
    # the physical switch floods one broadcast to both uplinks: each VM gets exactly one copy,
    # through the uplink its own group pins it to
    for up in ups:
        up.receive(make(BCAST, PEER, vid=5))
    assert all(len(sent(p)) == 1 for p in (*web, *db))
    ups[1].receive(make(BCAST, PEER, vid=5))  # only the db ports hear vmnic1
    assert [len(sent(p)) for p in (*web, *db)] == [0, 0, 1, 1]
    assert sent(ups[0]) == [] and sent(ups[1]) == []  # never out of another uplink


def test_a_group_without_override_follows_the_switch_policy() -> None:
    sw, ups, _, _ = build(switch_policy=TeamingPolicy(
        standby=("vmnic0",), load_balancing=LoadBalancing.EXPLICIT_FAILOVER))
    plain = sw.attach(Vif(30, 0, mac="00:16:3e:00:03:00"), "plain")
    assert sw.uplink_for(plain) is ups[1]
    assert sw.teaming_of(plain) is sw.teaming
    sw.update_port_group(PortGroup("plain", vlan=5, teaming=WEB))  # override it live
    assert sw.uplink_for(plain) is ups[0]


def test_standby_uplink_of_every_policy_takes_nothing_in() -> None:
    sw = StandardSwitch("vs", clock=ManualClock())
    ups = [sw.add_uplink(Pif(f"vmnic{i}")) for i in range(3)]
    sw.add_port_group(PortGroup("web", vlan=5, teaming=WEB))
    sw.teaming = TeamingPolicy(active=("vmnic0",), standby=("vmnic1", "vmnic2"))
    vm = sw.attach(Vif(1, 0, mac="00:16:3e:00:00:01"), "web")
    assert sw.uplinks_in_use() == {ups[0]}
    ups[1].receive(make(BCAST, PEER, vid=5))
    assert ups[1].counters.drops == {"uplink-not-in-use": 1} and sent(vm) == []


def test_override_naming_an_unknown_uplink_is_refused() -> None:
    sw = StandardSwitch("vs", clock=ManualClock())
    sw.add_uplink(Pif("vmnic0"))
    with pytest.raises(ConfigError, match="port group 'web' teaming names uplink 'vmnic1'"):
        sw.add_port_group(PortGroup("web", teaming=WEB))
    with pytest.raises(ConfigError, match="teaming must be a TeamingPolicy"):
        PortGroup("web", teaming="failover")  # type: ignore[arg-type]


def test_a_port_group_with_ports_cannot_be_removed() -> None:
    sw, _, _, _ = build()
    with pytest.raises(ConfigError, match="port group 'web' still has ports"):
        sw.remove_port_group("web")
    sw.remove_port_group("plain")
    assert sorted(sw.port_groups) == ["db", "web"]
