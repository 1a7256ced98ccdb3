"""NIC teaming decisions: port-id pinning, active/standby failover, one copy of each flood."""
from __future__ import annotations

import pytest

from netsim.teaming import Team


def test_port_id_spreads_ports_over_active_uplinks_only() -> None:
    team = Team(["vmnic0", "vmnic1"], ["vmnic2"])
    assert team.pinning(range(4)) == {0: "vmnic0", 1: "vmnic1", 2: "vmnic0", 3: "vmnic1"}


def test_pinning_changes_only_when_the_uplinks_in_use_change() -> None:
    team = Team(["vmnic0"], ["vmnic1"])
    assert team.uplink_for(5) == "vmnic0"
    assert team.set_link("vmnic1", False) is False  # a standby going down changes nothing
    assert team.version == 0
    team.set_link("vmnic1", True)
    assert team.set_link("vmnic0", False) is True  # failover to the standby
    assert team.uplink_for(5) == "vmnic1" and team.version == 1
    assert team.set_link("vmnic0", True) is True  # failback when the active returns
    assert team.uplink_for(5) == "vmnic0"


def test_all_down_means_no_uplink() -> None:
    team = Team(["a"], ["b"])
    team.set_link("a", False)
    team.set_link("b", False)
    assert team.uplink_for(0) is None
    assert not team.accepts("a", 0, flooded=False)


def test_floods_are_taken_once_and_standby_takes_nothing() -> None:
    team = Team(["a", "b"], ["c"])
    # port 0 is pinned to a, port 1 to b: a flood arriving on both reaches each port once
    copies = {p: [u for u in ("a", "b", "c") if team.accepts(u, p, flooded=True)]
              for p in (0, 1)}
    assert copies == {0: ["a"], 1: ["b"]}
    assert team.accepts("b", 0, flooded=False)  # unicast: any uplink in use
    assert not team.accepts("c", 0, flooded=False)  # standby: nothing at all


def test_explicit_failover_uses_one_uplink() -> None:
    team = Team(["a", "b"], policy="failover")
    assert {team.uplink_for(p) for p in range(5)} == {"a"}
    team.set_link("a", False)
    assert {team.uplink_for(p) for p in range(5)} == {"b"}


def test_bad_teams_are_refused() -> None:
    with pytest.raises(ValueError):
        Team([])
    with pytest.raises(ValueError):
        Team(["a"], ["a"])
    with pytest.raises(KeyError):
        Team(["a"]).set_link("z", False)
