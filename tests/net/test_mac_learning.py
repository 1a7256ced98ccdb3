"""MAC learning on a manual clock: learn, age out, bounded size with fair eviction, GARP lock."""
from __future__ import annotations

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.mac_table import LEARNED, LOCKED, NO_SPACE, MacTable
from netsim.dataplane.policy import VlanPolicy as V
from netsim.dataplane.switch import PhysicalSwitch
from netsim.errors import ConfigError
from netsim.wire import frame as fr

from .conftest import BCAST, A, B, make, sent

S = 1_000_000_000


def mac(i: int) -> bytes:
    return bytes([0x02, 0, 0, 0, i >> 8, i & 0xFF])


def test_learned_unicast_goes_to_one_port_and_unknown_floods() -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    p1, p2, p3 = (sw.add_port(n, V.access(5)) for n in ("p1", "p2", "p3"))
    p1.receive(make(B, A))  # unknown B: flood
    assert len(sent(p2)) == 1 and len(sent(p3)) == 1
    p2.receive(make(A, B))  # A learned on p1
    assert len(sent(p1)) == 1 and sent(p3) == []
    p1.receive(make(B, A))  # B learned on p2
    assert len(sent(p2)) == 1 and sent(p3) == []
    assert [(e.vlan, e.mac, e.port.name) for e in sw.mac_table.entries(sw.clock.now_ns())] == [
        (5, fr.mac_to_str(A), "p1"), (5, fr.mac_to_str(B), "p2")]


def test_learning_is_per_vlan() -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    t1 = sw.add_port("t1", V.trunk())
    t2 = sw.add_port("t2", V.trunk())
    t3 = sw.add_port("t3", V.trunk())
    t1.receive(make(BCAST, A, vid=5))
    sent(t2), sent(t3)
    t2.receive(make(A, B, vid=65))  # A known only in VLAN 5: flood in 65
    assert len(sent(t1)) == 1 and len(sent(t3)) == 1


def test_never_sent_back_out_the_ingress_port() -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    p1 = sw.add_port("p1", V.access(1))
    p2 = sw.add_port("p2", V.access(1))
    p1.receive(make(BCAST, A))
    p1.receive(make(BCAST, B))
    p1.receive(make(A, B))  # A and B both on p1: filtered
    assert sent(p1) == []
    assert len(sent(p2)) == 2
    assert p1.counters.drops == {"same-port": 1}


def test_entries_age_out_after_aging_time() -> None:
    clock = ManualClock()
    sw = PhysicalSwitch("s", clock=clock, aging_s=300)
    p1, p2, p3 = (sw.add_port(n, V.access(1)) for n in ("p1", "p2", "p3"))
    p1.receive(make(BCAST, A))
    sent(p2), sent(p3)
    clock.advance(299)
    p2.receive(make(A, B))
    assert len(sent(p1)) == 1 and sent(p3) == []
    clock.advance(301)  # A last seen 600 s ago
    p2.receive(make(A, B))
    assert len(sent(p1)) == 1 and len(sent(p3)) == 1  # flooded again
    assert sw.mac_table.expirations == 1


def test_expire_sweeps_and_refresh_keeps_alive() -> None:
    t = MacTable(size=10, aging_s=15)
    t.learn(1, A, "p1", 0)
    t.learn(1, B, "p2", 0)
    t.learn(1, A, "p1", 10 * S)  # refreshed
    assert t.expire(20 * S) == 1
    assert t.lookup(1, A, 20 * S) == "p1"
    assert t.lookup(1, B, 20 * S) is None


def test_full_table_evicts_lru_entry_of_the_port_with_most_entries() -> None:
    t = MacTable(size=6)
    now = 0
    for i in range(4):  # p1 holds 4
        now += 1
        t.learn(1, mac(i), "p1", now)
    for i in range(10, 12):  # p2 holds 2
        now += 1
        t.learn(1, mac(i), "p2", now)
    now += 1
    t.learn(1, mac(1), "p1", now)  # refresh: mac(0) is now p1's LRU
    now += 1
    assert t.learn(1, mac(20), "p3", now) == LEARNED
    assert len(t) == 6 and t.evictions == 1
    assert t.lookup(1, mac(0), now) is None
    assert all(t.lookup(1, mac(i), now) for i in (1, 2, 3, 10, 11, 20))
    assert (t.count("p1"), t.count("p2"), t.count("p3")) == (3, 2, 1)


def test_a_flooding_port_only_evicts_its_own_entries() -> None:
    t = MacTable(size=100)
    for i in range(10):
        t.learn(1, mac(i), f"good{i}", i)
    for i in range(1000, 3000):  # MAC flood from one port
        t.learn(1, mac(i), "attacker", i)
    assert len(t) == 100
    assert all(t.lookup(1, mac(i), 3000) == f"good{i}" for i in range(10))
    assert t.count("attacker") == 90


def test_gratuitous_arp_locks_the_entry_for_five_seconds() -> None:
    t = MacTable()
    t.learn(1, A, "p1", 0)
    assert t.learn(1, A, "p2", 1 * S, garp=True) == LEARNED  # GARP moves it and locks it
    assert t.learn(1, A, "p1", 2 * S) == LOCKED  # a stray frame does not move it back
    assert t.lookup(1, A, 2 * S) == "p2"
    assert t.learn(1, A, "p1", 6 * S + 1) == LEARNED  # lock over
    assert t.lookup(1, A, 7 * S) == "p1"
    assert t.lock_refusals == 1


def test_switch_detects_garp_and_locks() -> None:
    from scapy.layers.l2 import ARP, Ether

    clock = ManualClock()
    sw = PhysicalSwitch("s", clock=clock)
    p1, p2, _p3 = (sw.add_port(n, V.access(1)) for n in ("p1", "p2", "p3"))
    p1.receive(make(BCAST, A))
    garp = fr.from_scapy(Ether(src=fr.mac_to_str(A), dst="ff:ff:ff:ff:ff:ff") / ARP(
        hwsrc=fr.mac_to_str(A), psrc="10.0.0.1", pdst="10.0.0.1"))
    p2.receive(garp)
    clock.advance(1)
    p1.receive(make(BCAST, A))
    assert sw.mac_table.lookup(1, A, clock.now_ns()) is p2


def test_per_port_mac_limit_refuses_new_macs() -> None:
    t = MacTable()
    assert t.learn(1, A, "p1", 0, limit=1) == LEARNED
    assert t.learn(1, B, "p1", 0, limit=1) == NO_SPACE
    assert t.learn(1, A, "p1", 1, limit=1) == LEARNED


def test_link_down_flushes_what_was_learned_there() -> None:
    sw = PhysicalSwitch("s", clock=ManualClock())
    p1 = sw.add_port("p1", V.access(1))
    sw.add_port("p2", V.access(1))
    p1.receive(make(BCAST, A))
    assert len(sw.mac_table) == 1
    p1.set_link(False)
    assert len(sw.mac_table) == 0


@pytest.mark.parametrize(("kw", "match"), [
    ({"size": 0}, "mac_table_size"), ({"aging_s": 0}, "aging_s"), ({"size": True}, "size")])
def test_bad_table_config(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MacTable(**kw)


def test_detached_port_is_forgotten_and_can_join_another_switch() -> None:
    clock = ManualClock()
    s1 = PhysicalSwitch("s1", clock=clock)
    s2 = PhysicalSwitch("s2", clock=clock)
    p1 = s1.add_port("p1", V.access(1))
    other = s1.add_port("p2", V.access(1))
    p1.receive(make(BCAST, A))
    s1.detach(p1)
    assert len(s1.mac_table) == 0 and p1.switch is None
    s2.add_port(p1, V.access(1))
    q = s2.add_port("q", V.access(1))
    p1.receive(make(BCAST, A))
    assert len(sent(q)) == 1 and len(sent(other)) == 1  # the one before detaching
    p1.set_link(False)  # only s2 hears about it now
    assert len(s2.mac_table) == 0
