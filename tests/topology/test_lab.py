"""Topologies brought to life: reachability, teaming failover, shaping rate, mirroring."""
from __future__ import annotations

import struct

import pytest

from netsim.lab.lab import Lab
from netsim.lab.topology import TopologyBuilder, load_topology
from tests.topology.conftest import TOPOLOGIES

# Who must reach whom: groups that reach each other fully, plus one-way/extra pairs.
EXPECTED = {
    "xen-vlans": [{"vm1", "vm2"}, {"vm3", "vm4"}, {"vm5", "vm6"}, {"vm7", "vm8"}],
    "esxi-vss": [{"web1", "web2"}, {"bak1", "bak2"}],
    "three-hosts": [{"app1", "app2", "app3"}, {"db1", "db2", "db3"}],
    # gw answers everyone; a1/a2 and b1 reach each other through gw; b2 has no gateway,
    # so it reaches only its own network
    "xen-router": [{"gw", "a1", "a2", "b1"}, {"gw", "b1", "b2"}, {"a1", "a2"}],
    # private VLANs: the promiscuous gw reaches all; isolated VMs only gw; the web community
    # itself and gw, across the two hosts and the PVLAN-aware ToR
    "esxi-pvlan": [{"gw", "iso1"}, {"gw", "iso2"}, {"gw", "iso3"}, {"gw", "web1", "web2"}],
}


def expected_pairs(groups: list[set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for a in g for b in g if a != b}


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example_reachability_matrix(name: str) -> None:
    topo = load_topology(TOPOLOGIES / f"{name}.yaml")
    async with Lab(topo) as lab:
        r = await lab.pingall(wait_s=1.0)
    got = {(s, d) for s in r.vms for d in r.vms if s != d and r.matrix[s][d]}
    assert got == expected_pairs(EXPECTED[name])
    assert set(r.vms) == {vm.name for vm in topo.vms}


async def test_vlans_never_leak_on_the_trunk() -> None:
    """Same subnet, different VLAN: vm1 (VLAN 5) and vm7 (untagged) never see each other."""
    async with Lab(load_topology(TOPOLOGIES / "xen-vlans.yaml")) as lab:
        assert not (await lab.ping("vm1", "vm7")).replied
        assert (await lab.ping("vm1", "vm2")).replied
        vm7 = lab.agents["vm7"].guest
        assert vm7.counters["tx-arp-reply"] == 0  # vm1's ARP for 10.0.5.7 never reached it


def two_host_team(policy: str = "port-id") -> TopologyBuilder:
    t = TopologyBuilder("team", seed=5)
    t.add_host("esx1", type="esxi", pifs=["vmnic0", "vmnic1"])
    t.add_switch("esx1", "vSwitch0", uplinks=["vmnic0", "vmnic1"],
                 teaming={"policy": policy, "active": ["vmnic0"], "standby": ["vmnic1"]})
    t.add_port_group("esx1", "App", vlan=10)
    t.add_vm("esx1", "web", nics=[{"network": "App", "ip": "10.0.0.1/24"}])
    t.add_host("esx2", type="esxi", pifs=["vmnic0"])
    t.add_switch("esx2", "vSwitch0", uplinks=["vmnic0"])
    t.add_port_group("esx2", "App", vlan=10)
    t.add_vm("esx2", "db", nics=[{"network": "App", "ip": "10.0.0.2/24"}])
    t.connect("esx1.vmnic0", "tor1", mode="trunk", vlans=[10])
    t.connect("esx2.vmnic0", "tor1", mode="trunk", vlans=[10])
    t.connect("esx1.vmnic1", "tor2", mode="trunk", vlans=[10])
    t.connect("tor1", "tor2", vlans=[10])
    return t


async def test_a_flood_reaching_both_uplinks_is_taken_once() -> None:
    async with Lab(two_host_team().build()) as lab:
        assert (await lab.ping("db", "web")).replied
        # db's ARP broadcast reached esx1 on vmnic0 and, through tor2, on standby vmnic1
        standby = lab["esx1/vmnic1"].counters
        assert standby.drops.get("uplink-not-in-use", 0) >= 1
        web = lab.agents["web"].guest
        assert web.counters["tx-arp-reply"] == 1  # one copy of the request, one answer


async def test_failover_loses_only_the_frames_in_flight() -> None:
    async with Lab(two_host_team().build()) as lab:
        assert (await lab.ping("web", "db")).replied
        web, db = lab.agents["web"], lab.agents["db"]
        sent = 0
        in_flight = None
        for rnd in range(20):
            for _ in range(10):
                web.send_udp("10.0.0.2", 5000, 6000, struct.pack("!I", sent))
                sent += 1
            if rnd == 8:  # pull vmnic0 while this round is still queued for the wire
                in_flight = len(lab["esx1/vmnic0"].queue)
                lab.set_link("esx1/vmnic0", False)
            await lab.settle()
        got = [struct.unpack("!I", r.payload)[0] for r in db.received if r.kind == "udp"]
        assert len(got) == len(set(got)), "duplicate frames after failover"
        lost = sent - len(got)
        assert in_flight == 10
        assert lost <= in_flight
        assert set(range(90, sent)) <= set(got)  # everything after the failover arrives
        assert lab["esx1/vmnic1"].counters.tx_frames > 0
        assert (await lab.ping("web", "db")).replied  # and replies find their way back
        lab.set_link("esx1/vmnic0", True)  # failback
        assert (await lab.ping("web", "db")).replied


def per_group_team() -> TopologyBuilder:
    """esx1 teams vmnic0+vmnic1 (both to tor1); App prefers vmnic0, Backup vmnic1."""
    t = TopologyBuilder("pgteam", seed=9)
    t.add_host("esx1", type="esxi", pifs=["vmnic0", "vmnic1"])
    t.add_switch("esx1", "vSwitch0", uplinks=["vmnic0", "vmnic1"])
    t.add_port_group("esx1", "App", vlan=10,
                     teaming={"policy": "failover", "active": ["vmnic0"], "standby": ["vmnic1"]})
    t.add_port_group("esx1", "Backup", vlan=20,
                     teaming={"policy": "failover", "active": ["vmnic1"], "standby": ["vmnic0"]})
    t.add_vm("esx1", "web", nics=[{"network": "App", "ip": "10.0.0.1/24"}])
    t.add_vm("esx1", "bak", nics=[{"network": "Backup", "ip": "10.0.1.1/24"}])
    t.add_host("esx2", type="esxi", pifs=["vmnic0"])
    t.add_switch("esx2", "vSwitch0", uplinks=["vmnic0"])
    t.add_port_group("esx2", "App", vlan=10)
    t.add_port_group("esx2", "Backup", vlan=20)
    t.add_vm("esx2", "db", nics=[{"network": "App", "ip": "10.0.0.2/24"}])
    t.add_vm("esx2", "bak2", nics=[{"network": "Backup", "ip": "10.0.1.2/24"}])
    for pif in ("esx1.vmnic0", "esx1.vmnic1", "esx2.vmnic0"):
        t.connect(pif, "tor1", mode="trunk", vlans=[10, 20])
    return t


async def test_port_group_teaming_from_the_topology_pins_and_fails_over_per_group() -> None:
    topo = per_group_team().build()
    assert topo.host("esx1").network("App").teaming.active == ("vmnic0",)
    async with Lab(topo) as lab:
        up0, up1 = lab["esx1/vmnic0"], lab["esx1/vmnic1"]
        sw = lab["esx1/vSwitch0"]
        assert sw.uplink_for(lab["web"].ports[0]) is up0
        assert sw.uplink_for(lab["bak"].ports[0]) is up1
        for src, dst, busy, idle in (("db", "web", up0, up1), ("bak2", "bak", up1, up0)):
            before = (busy.counters.tx_frames, idle.counters.tx_frames)
            assert (await lab.ping(src, dst)).replied
            assert busy.counters.tx_frames > before[0]  # replies left by dst's group's uplink
            assert idle.counters.tx_frames == before[1]  # and nothing by the other group's
        # tor1 floods each broadcast to both uplinks; each VM took exactly one copy
        assert lab.agents["web"].guest.counters["tx-arp-reply"] == 1
        assert lab.agents["bak"].guest.counters["tx-arp-reply"] == 1
        lab.set_link("esx1/vmnic1", False)  # only Backup fails over
        assert sw.uplink_for(lab["bak"].ports[0]) is up0
        assert sw.uplink_for(lab["web"].ports[0]) is up0
        assert (await lab.ping("bak", "bak2")).replied
        lab.set_link("esx1/vmnic1", True)  # failback
        assert sw.uplink_for(lab["bak"].ports[0]) is up1
        assert (await lab.ping("bak", "bak2")).replied


async def test_shaped_rate_is_the_average_within_two_percent() -> None:
    topo = load_topology(TOPOLOGIES / "esxi-vss.yaml")  # Backup: 10 Mbit/s, 20 peak, 64 KiB
    async with Lab(topo) as lab:
        src, dst = lab["bak1"].ports[0], lab["bak2"].ports[0]
        frame = (dst.mac + src.mac + b"\x08\x00" + bytes(986))  # 1000 bytes
        lab.agents["bak2"].guest.counters.clear()
        seconds, offered_bps = 10.0, 16_000_000
        interval = len(frame) * 8 / offered_bps
        n = int(seconds / interval)
        start_tx = dst.counters.tx_bytes
        for i in range(n):
            src.vnic.send(frame)
            lab.clock.advance(interval)
            if i % 200 == 199:
                await lab.settle()
        await lab.settle()
        rate = (dst.counters.tx_bytes - start_tx) * 8 / seconds
        assert rate == pytest.approx(10_000_000, rel=0.02)
        assert src.counters.drops["shaped"] > 0


@pytest.mark.parametrize("normal", [None, True])
async def test_port_mirroring_copies_a_ports_frames(normal: bool | None) -> None:
    """None: the session leaves `normal_traffic_allowed` unset - vSphere's default,
    "Normal I/O on destination ports: Disallowed": vm3 gets the copies and nothing else."""
    t = TopologyBuilder("mirror")
    t.add_host("xen1", pifs=["eth0"]).add_switch("xen1", "xenbr0", uplinks=["eth0"])
    t.add_port_group("xen1", "lan", switch="xenbr0")
    for i in (1, 2, 3):
        t.add_vm("xen1", f"vm{i}", nics=[{"network": "lan", "ip": f"10.0.0.{i}/24"}])
    opts = {} if normal is None else {"normal_traffic_allowed": normal}
    t.add_mirror("xen1", "span", sources=["vif1.0"], destination="vif3.0", **opts)
    async with Lab(t.build()) as lab:
        assert (await lab.ping("vm1", "vm2")).replied
        mirror = lab["vif3.0"]
        # vm1's ARP request and echo request in, vm2's ARP reply and echo reply out
        assert mirror.counters.tx_frames >= 4
        assert lab.agents["vm3"].guest.counters["rx-not-for-me"] >= 2
        before = mirror.counters.tx_frames
        # traffic that does not touch vif1.0 is not mirrored; vm3's own traffic flows only
        # where normal I/O is allowed, and is counted where it is not
        assert (await lab.ping("vm2", "vm3")).replied is bool(normal)
        copies = mirror.counters.tx_frames - before
        direct = lab.agents["vm3"].guest.counters["rx-echo-request"]
        assert copies <= 3 and direct == (1 if normal else 0)
        if not normal:
            assert mirror.counters.drops.get("mirror-destination", 0) >= 1


async def test_pif_down_in_the_file_cuts_the_host_off() -> None:
    text = (TOPOLOGIES / "three-hosts.yaml").read_text().replace(
        "  esx3:\n    type: esxi\n    pifs: {vmnic0: {}}",
        "  esx3:\n    type: esxi\n    pifs: {vmnic0: {up: false}}")
    from netsim.lab.topology import parse_topology

    async with Lab(parse_topology(text)) as lab:
        assert (await lab.ping("app1", "app2")).replied
        assert not (await lab.ping("app1", "app3")).replied
