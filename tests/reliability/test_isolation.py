"""Isolation over 10,000 random topologies and frame sequences: no frame crosses a VLAN except
by a double-tagging path `hvsim check` predicted, no non-promiscuous vNIC receives another MAC's
unicast, no forged-source frame leaves its switch when forged transmits is Reject."""
from __future__ import annotations

import pytest

from bench._rel import isolation
from netsim.dataplane.switch import StandardSwitch


def test_ten_thousand_random_topologies_hold_isolation() -> None:
    res = isolation.run_isolation(10_000, frames=12, seed=2026)
    assert res.cases == 10_000 and res.frames_sent == 120_000
    assert res.copies_checked > 50_000  # the frames really travelled
    assert res.violations == []
    # double-tagged frames really crossed VLANs, each time where hvsim check said they could
    assert res.crossings > 1000 and res.cases_with_holes > 100


def test_a_crossing_check_did_not_predict_is_a_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If `hvsim check` missed the double-tagging paths, the proof must fail: the crossings it
    observes are checked against the checker's predictions, not excused."""
    from netsim.lab.check import CheckReport

    monkeypatch.setattr(isolation, "find_holes", lambda switches, links: CheckReport())
    res = isolation.run_isolation(1000, seed=2026)
    assert any("a crossing hvsim check did not predict" in v for v in res.violations)
    assert res.crossings == 0


def test_the_oracle_catches_a_switch_that_lets_forged_frames_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariants are computed independently of the switch: break the switch's forged-
    transmits check and the proof must fail."""
    original = StandardSwitch._apply_group

    def leaky(self, port, group):  # type: ignore[no-untyped-def]
        original(self, port, group)
        port.sw_forged_ok = True

    monkeypatch.setattr(StandardSwitch, "_apply_group", leaky)
    res = isolation.run_isolation(300, seed=1)
    assert any("forged-source" in v for v in res.violations)


def test_the_oracle_catches_a_switch_that_ignores_promiscuous_reject(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = StandardSwitch._apply_group

    def promisc(self, port, group):  # type: ignore[no-untyped-def]
        original(self, port, group)
        port.sw_promisc = True

    monkeypatch.setattr(StandardSwitch, "_apply_group", promisc)
    res = isolation.run_isolation(300, seed=1)
    assert any("non-promiscuous" in v for v in res.violations)


def test_the_oracle_catches_a_switch_that_forgets_to_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    from netsim.dataplane.switch import Bridge

    def untagged(self, out, inner, tagged, vid, pcp, now):  # type: ignore[no-untyped-def]
        out.transmit(inner)
        return tagged

    monkeypatch.setattr(Bridge, "_emit", untagged)
    res = isolation.run_isolation(300, seed=1)
    assert any("arrived as VLAN" in v or "on VLAN" in v for v in res.violations)
