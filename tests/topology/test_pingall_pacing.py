"""pingall at scale: the matrix is the network's answer, never the tool's own overload."""
from __future__ import annotations

from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology


def vlans_lab(hosts: int, per_host_per_vlan: int, vlans: int) -> str:
    """XenServer hosts on one trunk; every VM in 10.0.0.0/16 whatever its VLAN, so every
    cross-VLAN ping floods two ARP requests that nobody answers."""
    out = ["name: paced", "hosts:"]
    n = 0
    for h in range(1, hosts + 1):
        out += [f"  xen{h}:", "    type: xen", "    pifs: {eth0: {}}",
                "    switches: {xenbr0: {uplinks: [eth0]}}", "    networks:"]
        out += [f"      v{10 + v}: {{switch: xenbr0, vlan: {10 + v}}}" for v in range(vlans)]
        out.append("    vms:")
        for v in range(vlans):
            for _ in range(per_host_per_vlan):
                n += 1
                out.append(f"      vm{n}: {{vifs: [{{network: v{10 + v}, "
                           f"ip: 10.0.{v}.{n}/16}}]}}")
    out += ["physical:", "  core:", "    ports:"]
    out += [f"      xen{h}.eth0: {{mode: trunk, vlans: [\"10-{9 + vlans}\"]}}"
            for h in range(1, hosts + 1)]
    return "\n".join(out) + "\n"


def vlan_of(lab: Lab, vm: str) -> int:
    return lab.agents[vm].guest.ifaces[0].ip.ip.packed[2]  # type: ignore[union-attr]


async def test_pingall_never_overflows_a_queue_and_the_matrix_is_exact() -> None:
    # 24 VMs pinging 8 at a time used to put 96 ARP requests at once into the core's trunk
    # queue toward the other host; with 32-frame queues that lost frames (queue-full) and
    # reported same-VLAN pairs as unreachable.
    topo = parse_topology(vlans_lab(hosts=2, per_host_per_vlan=6, vlans=2), "paced.yaml")
    lab = Lab(topo)
    for p in lab.fabric.ports():
        p.queue.maxlen = 32
    assert lab.ping_budget() == 32 // 4
    async with lab:
        r = await lab.pingall(wait_s=1.0)
        drops: dict[str, int] = {}
        for p in lab.fabric.ports():
            for reason, n in p.counters.drops.items():
                drops[reason] = drops.get(reason, 0) + n
    names = list(lab.agents)
    assert r.pairs == 24 * 23
    for s in names:
        for d in names:
            if s != d:
                assert r.reachable(s, d) == (vlan_of(lab, s) == vlan_of(lab, d)), (s, d)
    assert r.answered == 2 * 12 * 11
    assert "queue-full" not in drops, drops
    # the results keep their order: source by source, destinations in lab order
    assert [(x.src, str(x.dst)) for x in r.results[:2]] == [
        (names[0], str(lab.address_of(names[1]))), (names[0], str(lab.address_of(names[2])))]
