"""Teaming per distributed port group: each group's policy reaches the proxy switches, and
frames from other hosts reach every VM once whichever uplink its group pins it to."""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from netsim.errors import TopologyError
from netsim.lab.fabric import Fabric
from netsim.lab.topology import TopologyBuilder
from netsim.vds.dswitch import ManagementPlane
from netsim.vds.host import HostAgent, NicSpec, vds_from_topology
from netsim.vds.transport.memory import MemoryBroker, MemoryBus
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import DvPortGroup, DvTeaming, VdsConfig

T = 10.0
TOPICS = Topics("lab")
BCAST = b"\xff" * 6
ECHO = 0x88B5


def echo(dst: bytes, src: bytes, seq: int) -> bytes:
    return dst + src + ECHO.to_bytes(2, "big") + seq.to_bytes(4, "big") + bytes(42)


CONFIG = VdsConfig(
    "dvs1", 1, uplinks=("uplink1", "uplink2"),
    portgroups=(
        DvPortGroup("App", 100, teaming=DvTeaming("failover", ("uplink1",), ("uplink2",))),
        DvPortGroup("DB", 200, teaming=DvTeaming("failover", ("uplink2",), ("uplink1",))),
    ),
    hosts={"esx1": {"uplink1": "vmnic0", "uplink2": "vmnic1"}, "esx2": {"uplink1": "vmnic0"}},
)


async def test_each_group_uses_its_uplink_and_floods_from_other_hosts_arrive_once() -> None:
    broker = MemoryBroker()
    async with contextlib.AsyncExitStack() as stack:
        vc = await stack.enter_async_context(MemoryBus(broker, client_id="vcenter"))
        mp = await stack.enter_async_context(ManagementPlane(vc, TOPICS))
        ag: dict[str, HostAgent] = {}
        for i, name in enumerate(("esx1", "esx2")):
            fab = await stack.enter_async_context(Fabric())
            bus = await stack.enter_async_context(
                MemoryBus(broker, client_id=name, presence_topic=TOPICS.presence(name)))
            ag[name] = await stack.enter_async_context(
                HostAgent(fab, name, bus, TOPICS, session=i + 1))
        await mp.publish(CONFIG)
        for a in ag.values():
            await a.wait_config("dvs1", 1, within_s=T)
        app1, db1 = [
            (await ag["esx1"].add_vm(n, [NicSpec("dvs1", g, f"00:50:56:00:01:0{i}")])).ports[0]
            for i, (n, g) in enumerate((("app1", "App"), ("db1", "DB")))
        ]
        app2, db2 = [
            (await ag["esx2"].add_vm(n, [NicSpec("dvs1", g, f"00:50:56:00:02:0{i}")])).ports[0]
            for i, (n, g) in enumerate((("app2", "App"), ("db2", "DB")))
        ]
        for vlan in (100, 200):
            await ag["esx2"].plane.peers.wait_until(
                lambda v=vlan: "esx1" in ag["esx2"].plane.peers.flood_targets("dvs1", v, "esx2"),
                within_s=T, what=f"esx2 sees esx1 in VLAN {vlan}")
        proxy = ag["esx1"].proxies["dvs1"]
        sw = proxy.switch
        vmnic0, vmnic1 = proxy.uplinks["uplink1"], proxy.uplinks["uplink2"]
        assert sw.uplink_for(app1) is vmnic0 and sw.uplink_for(db1) is vmnic1
        # broadcasts from esx2 reach each esx1 VM exactly once, through its own group's uplink
        for src, dst, seq in ((app2, app1, 1), (db2, db1, 2)):
            f = echo(BCAST, src.mac, seq)
            src.vnic.send(f)
            assert await asyncio.wait_for(dst.vnic.recv(), T) == f
        # unicast back: each leaves esx1 by its group's uplink, and arrives
        app1.vnic.send(echo(app2.mac, app1.mac, 3))
        db1.vnic.send(echo(db2.mac, db1.mac, 4))
        assert (await asyncio.wait_for(app2.vnic.recv(), T))[14:18] == (3).to_bytes(4, "big")
        assert (await asyncio.wait_for(db2.vnic.recv(), T))[14:18] == (4).to_bytes(4, "big")
        assert vmnic0.counters.tx_frames == 1 and vmnic1.counters.tx_frames == 1
        # and a unicast from esx2 to db1 enters by db1's uplink
        db2.vnic.send(echo(db1.mac, db2.mac, 5))
        assert (await asyncio.wait_for(db1.vnic.recv(), T))[14:18] == (5).to_bytes(4, "big")
        await asyncio.sleep(0.05)
        assert app1.vnic.drain() == [] and db1.vnic.drain() == []  # no duplicates
        assert vmnic1.counters.rx_frames == 2 and vmnic0.counters.rx_frames == 1


def test_topology_teaming_becomes_each_distributed_port_groups_teaming() -> None:
    t = TopologyBuilder("dv")
    t.add_host("esx1", type="esxi", pifs=["vmnic0", "vmnic1"])
    t.add_switch("esx1", "vSwitch0", uplinks=["vmnic0", "vmnic1"],
                 teaming={"active": ["vmnic0"], "standby": ["vmnic1"]})
    t.add_port_group("esx1", "App", vlan=10)
    t.add_port_group("esx1", "DB", vlan=20,
                     teaming={"policy": "failover", "active": ["vmnic1"], "standby": ["vmnic0"]})
    t.add_vm("esx1", "web", nics=[{"network": "App"}])
    t.add_host("esx2", type="esxi", pifs=["vmnic4"])
    t.add_switch("esx2", "vSwitch0", uplinks=["vmnic4"])
    t.add_port_group("esx2", "App", vlan=10)
    t.add_port_group("esx2", "DB", vlan=20)
    t.add_vm("esx2", "db", nics=[{"network": "DB"}])
    vds = vds_from_topology(t.build())
    assert vds.uplinks == ("uplink1", "uplink2")
    assert vds.hosts == {"esx1": {"uplink1": "vmnic0", "uplink2": "vmnic1"},
                         "esx2": {"uplink1": "vmnic4"}}
    assert vds.portgroup("App").teaming == DvTeaming("port-id", ("uplink1",), ("uplink2",))
    assert vds.portgroup("DB").teaming == DvTeaming("failover", ("uplink2",), ("uplink1",))
    assert VdsConfig.from_json(vds.to_json()) == vds  # survives the wire


def test_two_hosts_teaming_one_group_differently_is_refused() -> None:
    t = TopologyBuilder("dv")
    for h in ("esx1", "esx2"):
        t.add_host(h, type="esxi", pifs=["vmnic0", "vmnic1"])
        t.add_switch(h, "vSwitch0", uplinks=["vmnic0", "vmnic1"])
    t.add_port_group("esx1", "App", teaming={"active": ["vmnic0"], "standby": ["vmnic1"]})
    t.add_port_group("esx2", "App", teaming={"active": ["vmnic1"], "standby": ["vmnic0"]})
    with pytest.raises(TopologyError, match="port group 'App' differs between hosts esx1 and esx2"):
        vds_from_topology(t.build())
