"""pingall's results: compact whatever the lab's size, and read as they always were (the
matrix, every `PingResult` in order, one pair's result)."""
from __future__ import annotations

import ipaddress
import tracemalloc

import pytest

from netsim.lab.agent import PingResult
from netsim.lab.lab import Lab, Reachability
from netsim.lab.topology import parse_topology
from tests.topology.test_pingall_pacing import vlan_of, vlans_lab


async def test_matrix_results_and_one_pair_agree_with_the_network() -> None:
    lab = Lab(parse_topology(vlans_lab(hosts=2, per_host_per_vlan=2, vlans=2), "r.yaml"))
    async with lab:
        r = await lab.pingall(wait_s=1.0)
    names = list(lab.agents)
    assert r.vms == tuple(names) and r.pairs == 8 * 7 == len(r.results)
    expected = {s: {d: vlan_of(lab, s) == vlan_of(lab, d) for d in names if d != s}
                for s in names}
    assert r.matrix == expected and dict(r.matrix[names[0]]) == expected[names[0]]
    assert r.answered == sum(v for row in expected.values() for v in row.values()) == 2 * 4 * 3
    ordered = [(s, d) for s in names for d in names if d != s]
    for k, (s, d) in enumerate(ordered):
        one = r.result(s, d)
        assert one == r.results[k]
        assert one.src == s and one.dst == lab.address_of(d, toward=s)
        assert one.replied == expected[s][d] and r.reachable(s, d) == one.replied
        # an answer carries its round trip on the lab's clock and the reply's TTL
        assert (one.rtt_s is not None and 0 <= one.rtt_s < 1.0 and one.ttl == 64) \
            if one.replied else (one.rtt_s is None and one.ttl is None)
    # each source numbers its pings 1, 2, ... in the order it sent them
    assert sorted(r.result(names[0], d).seq for d in names[1:]) == list(range(1, 8))
    assert r.results[-1] == r.result(names[-1], names[-2]) and r.results[:2] == tuple(
        r.results[k] for k in range(2))
    with pytest.raises(KeyError):
        r.reachable(names[0], names[0])
    with pytest.raises(KeyError):
        r.matrix["nobody"]


def test_a_thousand_vms_results_take_16_bytes_a_pair() -> None:
    names = [f"vm{i}" for i in range(1000)]
    tracemalloc.start()
    r = Reachability(names)
    for i in range(0, 1000, 7):  # some answered, some not
        for j in range(1000):
            if i != j:
                r.record(i, j, 0x0A000001 + j, j % 65536, 0.001 * (i == j % 10), 64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # 999,000 pairs at 1 + 4 + 2 + 8 + 1 bytes: no object per ping is kept
    assert peak < 1000 * 1000 * 16 + 2 * 2**20
    assert r.pairs == 999_000
    assert r.result("vm7", "vm3") == PingResult("vm7", ipaddress.IPv4Address("10.0.0.4"), 3,
                                                True, 0.0, 64)
    assert not r.reachable("vm1", "vm2") and r.result("vm1", "vm2").rtt_s is None
