"""pingall's fast paths change nothing a user can see.

The fast paths: a switch queues a broadcast to its VM ports in one inlined loop (only ports
nothing observes), and a guest reads its queued frames in one loop that decides someone else's
ARP requests itself (`Guest.receive_batch`). The exact paths: every port observed (a capture
on all of them) and every frame handed to the guest one by one (`GuestAgent.deliver`). Both
must give the same reachability, the same counters on every port and guest, and a capture must
still see every flooded frame.
"""
from __future__ import annotations

import functools
import ipaddress
import random
from pathlib import Path
from typing import Any

from netsim.dataplane.guest import Guest, Iface
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology
from netsim.wire.capture import read_pcapng
from tests.topology.test_pingall_pacing import vlans_lab


def _per_frame_delivery(lab: Lab) -> None:
    """Make the lab hand frames to its guests one by one (`deliver`), as before batching."""
    fabric = lab.fabric

    def one_by_one(target: Any, callback: Any) -> None:
        agent, ifindex = callback.func.__self__, callback.args[0]
        fabric.on_receive(target, functools.partial(agent.deliver, ifindex))

    fabric.on_receive_batch = one_by_one  # type: ignore[method-assign]


async def _run(topo_text: str, *, exact: bool, tmp: Path) -> dict[str, Any]:
    lab = Lab(parse_topology(topo_text, "mixed.yaml"))
    watched = "xen1/vif1.0"  # vm1's VIF: a capture there must see every flood of its VLAN
    if exact:
        _per_frame_delivery(lab)
        paths = lab.capture("all", tmp)
    else:
        paths = lab.capture([watched], tmp)
    async with lab:
        reach = await lab.pingall(wait_s=1.0)
        lab.fabric.flush_captures()
    ports = {p.path: p.counters.as_dict() for p in lab.fabric.ports()}
    guests = {n: dict(a.guest.counters) for n, a in lab.agents.items()}
    arps = {n: dict(a.guest.arp) for n, a in lab.agents.items()}
    cap = next(p for p in paths if p.name.startswith("xen1") and "vif1.0" in p.name)
    return {"reach": reach, "ports": ports, "guests": guests, "arps": arps,
            "capture": read_pcapng(cap)[1], "lab": lab}


async def test_fast_paths_give_the_exact_paths_results(tmp_path: Path) -> None:
    # 2 hosts x 3 VLANs x 3 VMs in one /16: every cross-VLAN ping floods an ARP request that
    # nobody answers, same-VLAN pings resolve and answer
    text = vlans_lab(hosts=2, per_host_per_vlan=3, vlans=3)
    fast = await _run(text, exact=False, tmp=tmp_path / "fast")
    exact = await _run(text, exact=True, tmp=tmp_path / "exact")

    assert fast["reach"].matrix == exact["reach"].matrix
    assert fast["reach"].results == exact["reach"].results
    assert fast["reach"].answered == 3 * 6 * 5  # 3 VLANs of 6 VMs, each ordered pair
    assert fast["guests"] == exact["guests"]
    assert fast["arps"] == exact["arps"]
    assert fast["ports"] == exact["ports"]

    # The capture on vm1's VIF saw every ARP request flooded in its VLAN (10.0.0.x): one per
    # ping from another VM of VLAN 10 that had to resolve (each reached vm1 once), as many as
    # its port counted, in both runs.
    lab = fast["lab"]
    vm1_ip = lab.address_of("vm1").packed
    vm1_mac = lab.fabric["vm1"].ports[0].vnic.mac
    vlan_vms = [n for n, a in lab.agents.items()
                if a.guest.ifaces[0].ip.ip.packed[2] == 0 and n != "vm1"]  # type: ignore[union-attr]
    sent_requests = sum(fast["guests"][n]["tx-arp-request"] for n in vlan_vms)
    for run in (fast, exact):
        seen = [f for _, _, f, _ in run["capture"]
                if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[6:12] != vm1_mac]
        assert len(seen) == sent_requests > 20
        assert sum(f[38:42] != vm1_ip for f in seen) > 0  # most were not for vm1: still seen
    port = fast["ports"]["xen1/vif1.0"]
    assert port["tx_frames"] == exact["ports"]["xen1/vif1.0"]["tx_frames"]


def _frames(rng: random.Random) -> list[bytes]:
    """A mixed stream toward a guest at 10.0.0.1: other people's ARP requests (from senders it
    may or may not know), requests for it, replies to it, echo requests, runts, tagged."""
    me_mac = bytes.fromhex("00163e000001")
    out: list[bytes] = []
    for _ in range(400):
        k = rng.randrange(7)
        s = rng.randrange(2, 200)
        smac = bytes.fromhex(f"00163e0000{s:02x}")
        sip = bytes([10, 0, 0, s])
        tip = bytes([10, 0, 0, rng.choice([1, rng.randrange(2, 30)])])
        if k <= 2:  # ARP request (for us or not)
            out.append(b"\xff" * 6 + smac + b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01"
                       + smac + sip + b"\0" * 6 + tip)
        elif k == 3:  # ARP reply to us (teaches the sender)
            out.append(me_mac + smac + b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x02"
                       + smac + sip + me_mac + bytes([10, 0, 0, 1]))
        elif k == 4:  # echo request from a sender: answered once it is known
            g = Guest("peer", [Iface(smac.hex(":"), ipaddress.IPv4Interface(
                f"10.0.0.{s}/24"))])
            g.arp[bytes([10, 0, 0, 1])] = me_mac
            out.extend(f for _, f in g.ping("10.0.0.1", seq=rng.randrange(100)))
        elif k == 5:
            out.append(b"\xff" * 8)  # runt
        else:  # a tagged ARP request: a wrong VLAN for an untagged guest
            out.append(b"\xff" * 6 + smac + b"\x81\x00\x00\x0a\x08\x06\x00\x01\x08\x00\x06\x04"
                       b"\x00\x01" + smac + sip + b"\0" * 6 + tip)
    return out


def test_receive_batch_is_receive_frame_by_frame() -> None:
    for seed in range(5):
        frames = _frames(random.Random(seed))

        def guest() -> Guest:
            return Guest("g", [Iface("00:16:3e:00:00:01",
                                     ipaddress.IPv4Interface("10.0.0.1/24"))])
        one, many = guest(), guest()
        sent_one = [tx for f in frames for tx in one.receive(0, f)]
        sent_many: list[Any] = []
        stops = 0
        i = 0
        while i < len(frames):
            txs, i = many.receive_batch(0, frames, i)
            sent_many += txs
            stops += 1
        assert sent_many == sent_one
        assert one.counters == many.counters
        assert one.counters["rx-arp-not-for-me"] > 50
        assert one.arp == many.arp and list(one.inbox) == list(many.inbox)
        # it stops where there is something to send or to read, not after every frame
        assert stops < len(frames) / 2


def _arp(op: int, smac: bytes, sha: bytes, spa: bytes, dmac: bytes, tha: bytes,
         tpa: bytes) -> bytes:
    return (dmac + smac + b"\x08\x06\x00\x01\x08\x00\x06\x04\x00" + bytes([op]) + sha + spa
            + tha + tpa)


def _switch_with_guest(reader: bool) -> tuple[Any, Any, list[Any]]:
    from netsim.clock import ManualClock
    from netsim.dataplane.port import Vif
    from netsim.dataplane.switch import PortGroup, StandardSwitch
    from netsim.lab.agent import GuestAgent

    clock = ManualClock()
    sw = StandardSwitch("vs", clock=clock)
    sw.add_port_group(PortGroup("pg", vlan=0))
    me = sw.attach(Vif(1, 0, mac="00:16:3e:00:00:01"), "pg")
    peers = [sw.attach(Vif(2 + k, 0, mac=f"00:16:3e:00:01:{k:02x}"), "pg") for k in range(5)]
    guest = Guest("g", [Iface("00:16:3e:00:00:01", ipaddress.IPv4Interface("10.0.0.1/24"))])
    agent = GuestAgent(guest, [me.vnic.send], clock)
    if reader:
        me.set_reader(guest, 0)
    return agent, me, peers


def test_a_flood_decided_at_the_switch_is_the_guest_reading_it() -> None:
    # The same random stream of ARP requests (for the guest or not, from senders it knows or
    # not, sometimes with a new MAC for a known sender), ARP replies teaching it senders, its
    # own pings, and reads of its queue at random moments: a switch that decides floods for
    # the guest (when nothing is queued ahead) leaves the guest and every port exactly as one
    # that queues every frame for the guest to read.
    me_mac, bcast = bytes.fromhex("00163e000001"), b"\xff" * 6
    decided = 0
    for seed in range(20):
        rng = random.Random(seed)
        runs = [_switch_with_guest(reader) for reader in (True, False)]
        for _ in range(300):
            k = rng.randrange(5)
            op = rng.randrange(10)
            smac = bytes.fromhex(f"00163e0001{k:02x}")
            sha = smac if rng.random() < 0.8 else bytes.fromhex(f"02000000{seed:02x}{k:02x}")
            spa = bytes([10, 0, 0, 10 + k])
            tpa = bytes([10, 0, 0, 1 if rng.random() < 0.2 else 20 + rng.randrange(5)])
            dst = ipaddress.IPv4Address(f"10.0.0.{10 + rng.randrange(6)}")
            seq = rng.randrange(9)
            for agent, me, peers in runs:
                before = me.counters.tx_frames - len(me.queue)
                if op < 6:
                    peers[k].vnic.send(_arp(1, smac, sha, spa, bcast, b"\0" * 6, tpa))
                elif op == 6:
                    peers[k].vnic.send(_arp(2, smac, sha, spa, me_mac, me_mac,
                                            bytes([10, 0, 0, 1])))
                elif op == 7:
                    agent._send(agent.guest.ping(dst, seq=seq))
                elif op == 8:
                    agent.guest.give_up(dst)
                else:
                    agent.deliver_batch(0, me.vnic.drain())
                if agent is runs[0][0] and op < 6:
                    decided += me.counters.tx_frames - len(me.queue) - before
        for agent, me, _ in runs:
            agent.deliver_batch(0, me.vnic.drain())
        (fast, fme, fpeers), (exact, eme, epeers) = runs
        assert fast.guest.counters == exact.guest.counters
        assert fast.guest.arp == exact.guest.arp
        assert fast.guest._pending.keys() == exact.guest._pending.keys()
        assert [p.counters.as_dict() for p in (fme, *fpeers)] == \
            [p.counters.as_dict() for p in (eme, *epeers)]
        assert [p.vnic.drain() for p in fpeers] == [p.vnic.drain() for p in epeers]
    assert decided > 20 * 20  # the switch decided many (of ~180 requests a seed)


def test_only_a_single_vnic_untagged_guest_has_its_floods_decided_by_the_switch() -> None:
    from netsim.dataplane.port import Vif

    def guest(*ifaces: Iface) -> Guest:
        return Guest("g", list(ifaces))

    one = Iface("00:16:3e:00:00:01", ipaddress.IPv4Interface("10.0.0.1/24"))
    two = Iface("00:16:3e:00:00:02", ipaddress.IPv4Interface("10.0.1.1/24"))
    port = Vif(1, 0)
    port.set_reader(guest(one))
    assert port.rx_guest is not None and port.rx_ip == bytes([10, 0, 0, 1])
    # a router's vNICs share one ARP cache but have a queue each: what is "ahead" of a frame
    # spans queues read in turn, so its ports queue every frame
    for g in (guest(one, two), guest(Iface(one.mac, one.ip, vlan=5)), guest(Iface(one.mac))):
        port.set_reader(g)
        assert port.rx_guest is None
    port.set_reader(guest(one))
    port.set_reader(None)
    assert port.rx_guest is None
