"""Load-based teaming (vSphere "Route based on physical NIC load"): checks every 30 s, moves a
port off an uplink whose mean rx or tx use exceeds 75 % of its speed, never when under."""
from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.clock import ManualClock
from netsim.dataplane.lbt import THRESHOLD, LoadBasedTeaming, link_speed_bps, plan_moves
from netsim.dataplane.policy import LoadBalancing, TeamingPolicy
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology

from .conftest import make, sent

SPEED = 1_000_000  # 1 Mbit/s: 30 s at 75 % is 2.8 MB, a few thousand frames
WINDOW = 30.0
CAP = SPEED * WINDOW / 8  # bytes an uplink carries in a window at full speed
PEER = bytes.fromhex("020000000099")


def switch(n_vms: int = 4) -> tuple[StandardSwitch, list[Vif], list[Pif], ManualClock]:
    clock = ManualClock()
    sw = StandardSwitch("vs", clock=clock,
                        teaming=TeamingPolicy(load_balancing=LoadBalancing.LOAD_BASED))
    ups = [sw.add_uplink(Pif(f"vmnic{i}")) for i in range(2)]
    sw.add_port_group(PortGroup("pg", vlan=5))
    vms = [sw.attach(Vif(i + 1, 0, mac=bytes((0, 0x16, 0x3E, 0, 0, i + 1))), "pg")
           for i in range(n_vms)]
    return sw, vms, ups, clock


def blast(vm: Vif, nbytes: int, drain: list[Pif] | None = None, dst: bytes = PEER) -> None:
    """`nbytes` of frames from `vm` toward the physical network (unknown unicast), taking them
    off the `drain` uplinks' queues as they go (the wire would)."""
    n = nbytes // 1500
    while n > 0:
        k = min(n, 500)
        vm.vnic.send_many(make(dst, vm.mac, size=1500) for _ in range(k))
        n -= k
        for u in drain or ():
            sent(u)


# -- the decision, table-driven ------------------------------------------------------------------
def test_plan_moves_table() -> None:
    a, b, c = "a", "b", "c"
    teams = {"p1": (a, b), "p2": (a, b), "p3": (a, b)}
    speed = {a: SPEED, b: SPEED}
    cases = [
        # (port loads (tx, rx), pinned, expected moves)
        ({"p1": (0.5, 0), "p2": (0.3, 0)}, {"p1": a, "p2": a}, [("p1", a, b)]),  # 80 %: busiest
        ({"p1": (0.4, 0), "p2": (0.35, 0)}, {"p1": a, "p2": a}, []),  # 75 % is not over it
        ({"p1": (0, 0.8)}, {"p1": a}, []),  # one port: moving it would overload b
        ({"p1": (0, 0.6), "p2": (0, 0.3)}, {"p1": a, "p2": a}, [("p1", a, b)]),  # rx counts
        ({"p1": (0.5, 0), "p2": (0.3, 0), "p3": (0.4, 0)},  # b is loaded too: p1 doesn't fit
         {"p1": a, "p2": a, "p3": b}, [("p2", a, b)]),
        ({"p1": (0.5, 0), "p2": (0.3, 0), "p3": (0.5, 0)},  # neither fits: nothing moves
         {"p1": a, "p2": a, "p3": b}, []),
    ]
    for loads, pinned, want in cases:
        port_load = {p: (int(t * CAP), int(r * CAP)) for p, (t, r) in loads.items()}
        up_load = {u: (sum(port_load[p][0] for p in pinned if pinned[p] == u),
                       sum(port_load[p][1] for p in pinned if pinned[p] == u)) for u in (a, b)}
        got = plan_moves({p: teams[p] for p in loads}, pinned, port_load, up_load, speed, WINDOW)
        assert [m[:3] for m in got] == want, (loads, pinned)
    # the uplink is full (other ports' traffic too): p moves, and the move records 100 %
    assert plan_moves({"p": (a, c)}, {"p": a}, {"p": (CAP // 2, 0)}, {a: (CAP, 0)},
                      {a: SPEED, c: SPEED}, WINDOW) == [("p", a, c, 1.0)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1), st.floats(0, 1)),
                min_size=1, max_size=8))
def test_never_moves_a_port_while_every_uplink_is_at_or_under_75_percent(
        ports: list[tuple[int, float, float]]) -> None:
    uplinks = ("u0", "u1", "u2")
    pinned = {f"p{i}": uplinks[u] for i, (u, _, _) in enumerate(ports)}
    load = {u: [0, 0] for u in uplinks}
    port_load = {}
    for i, (_u, t, r) in enumerate(ports):
        port_load[f"p{i}"] = (int(t * CAP), int(r * CAP))
    # scale each uplink's ports so its total stays under the threshold
    for u in uplinks:
        mine = [p for p in pinned if pinned[p] == u]
        tx = sum(port_load[p][0] for p in mine) or 1
        rx = sum(port_load[p][1] for p in mine) or 1
        k = min(1.0, THRESHOLD * CAP / tx, THRESHOLD * CAP / rx)
        for p in mine:
            port_load[p] = (int(port_load[p][0] * k), int(port_load[p][1] * k))
            load[u][0] += port_load[p][0]
            load[u][1] += port_load[p][1]
    got = plan_moves({p: uplinks for p in pinned}, pinned, port_load,
                     {u: (t, r) for u, (t, r) in load.items()},
                     dict.fromkeys(uplinks, SPEED), WINDOW)
    assert got == []


# -- on a switch, with its counters and clock ----------------------------------------------------
def test_a_busy_uplink_sheds_its_busiest_port_at_the_30_s_check() -> None:
    sw, vms, ups, clock = switch()
    lbt = LoadBasedTeaming(sw, speed_of=lambda u: SPEED)
    on0 = [v for v in vms if sw.uplink_for(v) is ups[0]]
    assert len(on0) == 2  # port id placement first: two VMs per uplink
    heavy, light = on0
    blast(heavy, int(0.7 * CAP), ups)
    blast(light, int(0.1 * CAP), ups)
    clock.advance(WINDOW)
    (m,) = lbt.check()
    assert (m.port, m.src, m.dst) == (heavy.name, "vmnic0", "vmnic1")
    assert 0.75 < m.utilisation < 0.85
    assert sw.uplink_for(heavy) is ups[1]
    blast(heavy, 3000)
    assert len(sent(ups[1])) == 2 + 1  # the next frames leave by vmnic1 (after its RARP)
    clock.advance(WINDOW)  # a quiet window: nothing moves back
    assert lbt.check() == [] and sw.uplink_for(heavy) is ups[1]


def test_under_75_percent_nothing_moves_however_long() -> None:
    sw, vms, ups, clock = switch()
    lbt = LoadBasedTeaming(sw, speed_of=lambda u: SPEED)
    before = {v: sw.uplink_for(v) for v in vms}
    for _ in range(5):
        for v in vms:
            blast(v, int(0.37 * CAP), ups)  # two VMs per uplink: 74 %
        clock.advance(WINDOW)
        assert lbt.check() == []
    assert {v: sw.uplink_for(v) for v in vms} == before and lbt.checks == 5


LAB = """name: lbt
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {impair: {rate: 1Mbit}}, vmnic1: {impair: {rate: 1Mbit}}}
    switches:
      vSwitch0: {uplinks: [vmnic0, vmnic1], teaming: {policy: load-based}}
    port_groups:
      App: {switch: vSwitch0, vlan: 10}
    vms:
      a: {nics: [{network: App, ip: 10.0.10.1/24}]}
      b: {nics: [{network: App, ip: 10.0.10.2/24}]}
      c: {nics: [{network: App, ip: 10.0.10.3/24}]}
  esx2:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups:
      App: {switch: vSwitch0, vlan: 10}
    vms:
      peer: {nics: [{network: App, ip: 10.0.10.9/24}]}
physical:
  tor:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10]}
      esx1.vmnic1: {mode: trunk, vlans: [10]}
      esx2.vmnic0: {mode: trunk, vlans: [10]}
"""


async def test_lab_lbt_reads_the_link_rate_and_moves_on_the_virtual_clock() -> None:
    async with Lab(parse_topology(LAB)) as lab:
        sw = lab.fabric["esx1/vSwitch0"]
        assert [link_speed_bps(u) for u in sw.uplinks] == [SPEED, SPEED]
        a, c = (lab.fabric[n].ports[0] for n in ("a", "c"))
        assert sw.uplink_for(a) is sw.uplinks[0] and sw.uplink_for(c) is sw.uplinks[0]

        peer = lab.fabric["peer"].ports[0].vnic.mac
        for vm in ("a", "c"):  # the ToR learns where the peer is: no flooding back
            assert (await lab.ping(vm, "peer")).replied

        async def traffic() -> None:  # a: 0.6 Mbit/s for 30 s, c: 0.24: vmnic0 at 84 %
            for _ in range(300):
                blast(a, 7_500, dst=peer)
                blast(c, 3_000, dst=peer)
                await lab.clock.sleep(0.1)

        await lab.drive(traffic())
        await lab.run_for(0.5)
        assert [(m.port, m.src, m.dst) for m in sw.lbt.moves] == [(a.name, "vmnic0", "vmnic1")]
        assert abs(sw.lbt.moves[0].time_ns - lab.clock.now_ns()) < 1e9
        await asyncio.sleep(0)
