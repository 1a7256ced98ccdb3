"""Private VLANs on a distributed switch: the map travels in the vDS config (over the bus and
mosquitto), every proxy switch applies it, and the reach rules hold across hosts."""
from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from netsim.errors import ConfigError
from netsim.lab.fabric import Fabric
from netsim.vds.dswitch import ManagementPlane
from netsim.vds.host import HostAgent, NicSpec
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import DvPortGroup, VdsConfig

from .test_host import BCAST, echo, recv, sees

T = 10.0
TOPICS = Topics("lab")
PVLANS = ((100, 100, "promiscuous"), (100, 101, "isolated"), (100, 102, "community"))


def config(version: int, pvlans: tuple = PVLANS) -> VdsConfig:
    return VdsConfig(
        "dvs1", version,
        portgroups=(DvPortGroup("gw", 100), DvPortGroup("iso", 101), DvPortGroup("web", 102)),
        hosts={h: {"uplink1": "vmnic0"} for h in ("esx1", "esx2")},
        pvlans=pvlans,
    )


def test_the_map_round_trips_as_pvlan_map_entries() -> None:
    c = config(3)
    doc = json.loads(c.to_json())
    assert doc["pvlans"][1] == {"primary": 100, "secondary": 101, "type": "isolated"}
    assert VdsConfig.from_json(c.to_json()) == c
    assert VdsConfig.from_json(config(1, ()).to_json()).pvlans == ()


@pytest.mark.parametrize(
    ("pvlans", "error"),
    [
        ([{"primary": 100, "secondary": 101, "type": "isolated"}],
         r"dvs1\.pvlans: pvlan 101: primary 100 has no promiscuous entry"),
        ([{"primary": 100, "secondary": 101}], r"dvs1\.pvlans\[0\]\.type: missing"),
        ([{"primary": 100, "secondary": 101, "type": "closed"}],
         r"dvs1\.pvlans\[0\]: pvlan 101: type 'closed' is not one of"),
        ("100", r"dvs1\.pvlans: '100' is not list"),
    ],
)
def test_a_bad_map_is_refused_naming_the_entry(pvlans: object, error: str) -> None:
    doc = json.loads(config(1).to_json())
    doc["pvlans"] = pvlans
    with pytest.raises(ConfigError, match=error):
        VdsConfig.from_json(json.dumps(doc).encode())


@contextlib.asynccontextmanager
async def lab(bus_kit):
    async with contextlib.AsyncExitStack() as stack:
        vc = await stack.enter_async_context(bus_kit.make("vcenter"))
        mp = await stack.enter_async_context(ManagementPlane(vc, TOPICS))
        agents: dict[str, HostAgent] = {}
        for i, name in enumerate(("esx1", "esx2")):
            fab = await stack.enter_async_context(Fabric())
            bus = await stack.enter_async_context(
                bus_kit.make(name, presence_topic=TOPICS.presence(name)))
            agents[name] = await stack.enter_async_context(
                HostAgent(fab, name, bus, TOPICS, session=i + 1))
        await mp.publish(config(1))
        for a in agents.values():
            await a.wait_config("dvs1", 1, within_s=T)
        yield mp, agents


async def test_reach_rules_hold_across_hosts_and_follow_a_config_change(bus_kit) -> None:
    async with lab(bus_kit) as (mp, ag):
        gw = (await ag["esx1"].add_vm("gw", [NicSpec("dvs1", "gw", "00:50:56:00:00:01")]))
        iso1 = (await ag["esx1"].add_vm("iso1", [NicSpec("dvs1", "iso", "00:50:56:00:00:11")]))
        iso2 = (await ag["esx2"].add_vm("iso2", [NicSpec("dvs1", "iso", "00:50:56:00:00:12")]))
        web2 = (await ag["esx2"].add_vm("web2", [NicSpec("dvs1", "web", "00:50:56:00:00:22")]))
        g, i1, i2, w2 = (v.ports[0] for v in (gw, iso1, iso2, web2))
        # esx2's only ports are isolated and community: it still takes floods of primary 100,
        # and esx1 (promiscuous gw) takes floods of both secondaries
        assert ag["esx2"].links["dvs1"].vlans == {100, 101, 102}
        assert ag["esx1"].links["dvs1"].vlans == {100, 101, 102}
        await sees(ag["esx1"], "esx2", 100)
        await sees(ag["esx2"], "esx1", 101)
        # the isolated VM on esx2: its broadcast reaches the promiscuous gw only
        f = echo(BCAST, i2.mac, 1, 1)
        i2.vnic.send(f)
        assert await recv(g) == f
        # gw answers by unicast: learned on the primary, sent to esx2 alone
        before = ag["esx1"].links["dvs1"].counters.tx_unicast
        r = echo(i2.mac, g.mac, 2, 1)
        g.vnic.send(r)
        assert await recv(i2) == r
        assert ag["esx1"].links["dvs1"].counters.tx_unicast == before + 1
        # gw's broadcast reaches everyone
        b = echo(BCAST, g.mac, 1, 2)
        g.vnic.send(b)
        for p in (i1, i2, w2):
            assert await recv(p) == b
        # isolated to isolated, local or remote, and community to isolated: nothing
        i1.vnic.send(echo(BCAST, i1.mac, 1, 3))
        i1.vnic.send(echo(i2.mac, i1.mac, 1, 4))
        w2.vnic.send(echo(i2.mac, w2.mac, 1, 5))
        assert await recv(g) == echo(BCAST, i1.mac, 1, 3)
        await asyncio.sleep(0.3)
        assert i2.vnic.drain() == [] and w2.vnic.drain() == [] and g.vnic.drain() == []
        # vCenter drops the map: 101 is an ordinary VLAN again and the isolated VMs meet
        await mp.publish(config(2, ()))
        await mp.wait_applied("dvs1", 2, within_s=T)
        assert not ag["esx2"].proxies["dvs1"].switch.pvlan
        await sees(ag["esx1"], "esx2", 101)
        f = echo(BCAST, i1.mac, 1, 6)
        i1.vnic.send(f)
        assert await recv(i2) == f


async def test_blocked_port_group_and_max_mtu_arrive_with_the_config(bus_kit) -> None:
    async with lab(bus_kit) as (mp, ag):
        gw = (await ag["esx1"].add_vm("gw", [NicSpec("dvs1", "gw", "00:50:56:00:00:01")]))
        sw = ag["esx1"].proxies["dvs1"].switch
        assert sw.mtu == 1500  # vSphere's default maxMtu
        base = config(2)
        blocked = tuple(DvPortGroup(p.name, p.vlan, blocked=p.name == "gw")
                        for p in base.portgroups)
        await mp.publish(VdsConfig("dvs1", 2, portgroups=blocked, hosts=base.hosts,
                                   pvlans=PVLANS, max_mtu=9000))
        await mp.wait_applied("dvs1", 2, within_s=T)
        assert sw.mtu == 9000
        g = gw.ports[0]
        g.vnic.send(echo(BCAST, g.mac, 1, 1))
        assert g.counters.drops == {"blocked": 1}
        doc = json.loads(VdsConfig("dvs1", 1, max_mtu=9217).to_json())
        with pytest.raises(ConfigError, match=r"dvs1\.max_mtu: 9217 outside 68\.\.9216"):
            VdsConfig.from_json(json.dumps(doc).encode())
