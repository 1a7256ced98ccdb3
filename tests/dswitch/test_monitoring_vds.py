"""Port mirroring sessions and IPFIX of a distributed switch: they travel in the vDS config
(over the bus and mosquitto), each host applies its local part, sessions follow VMs that come
later, RSPAN and ERSPAN cross hosts, and IPFIX flows reach a collector on loopback."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest

from netsim.dataplane.flowmeter import IpfixConfig
from netsim.errors import ConfigError
from netsim.lab.fabric import Fabric
from netsim.vds.dswitch import ManagementPlane
from netsim.vds.host import HostAgent, NicSpec
from netsim.vds.monitoring import DvVspanSession
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import DvPortGroup, VdsConfig
from netsim.wire.erspan import decapsulate
from netsim.wire.ipfix import IpfixDecoder

from .test_host import BCAST, echo, recv

T = 10.0
TOPICS = Topics("lab")
MAC = {n: f"00:50:56:00:00:{i:02x}" for i, n in enumerate(("a", "b", "mon", "col", "c"), 1)}


def config(version: int, sessions: tuple[DvVspanSession, ...] = (),
           ipfix: IpfixConfig | None = None) -> VdsConfig:
    return VdsConfig("dvs1", version, portgroups=(DvPortGroup("lan", 10),),
                     hosts={h: {"uplink1": "vmnic0"} for h in ("esx1", "esx2")},
                     vspan_sessions=sessions, ipfix=ipfix)


def test_sessions_and_ipfix_round_trip_and_bad_ones_name_the_field() -> None:
    c = config(2, (DvVspanSession("s", sources=("a.eth0",), destination="mon.eth0"),
                   DvVspanSession("e", "encapsulatedRemoteMirrorSource", sources=("a.eth0",),
                                  destination="10.0.0.9", source_ip="10.0.0.250",
                                  destination_mac="00:50:56:00:00:09", encapsulation="erspan2")),
               IpfixConfig("127.0.0.1", 4739, 5))
    assert VdsConfig.from_json(c.to_json()) == c
    for change, msg in [
        ({"sampling_rate": 0}, r"vspan_sessions\[s\]: sampling_rate 0 outside 1\.\.65535"),
        ({"type": "span"}, r"vspan_sessions\[s\]\.type: 'span' not one of"),
        ({"uplinks": ["uplink7"]}, r"vspan_sessions\[s\]\.uplinks: 'uplink7' is not one of"),
        ({"destination": ""}, r"vspan_sessions\[s\]\.destination: missing"),
        ({"bogus": 1}, r"vspan_sessions\[s\]\.bogus: unknown setting"),
    ]:
        doc = json.loads(c.to_json())
        doc["vspan_sessions"][0].update(change)
        with pytest.raises(ConfigError, match=msg):
            VdsConfig.from_json(json.dumps(doc).encode())
    doc = json.loads(c.to_json())
    doc["vspan_sessions"][1]["destination_mac"] = "nope"
    with pytest.raises(ConfigError, match=r"vspan_sessions\[e\]: ERSPAN settings"):
        VdsConfig.from_json(json.dumps(doc).encode())
    doc = json.loads(c.to_json())
    doc["ipfix"]["idle_flow_timeout"] = 1
    with pytest.raises(ConfigError, match=r"dvs1\.ipfix: idle_flow_timeout 1 outside 10\.\.600"):
        VdsConfig.from_json(json.dumps(doc).encode())


@contextlib.asynccontextmanager
async def lab(bus_kit, first: VdsConfig):
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
        await mp.publish(first)
        for a in agents.values():
            await a.wait_config("dvs1", first.version, within_s=T)
        yield mp, agents


async def vm(agent: HostAgent, name: str):
    return (await agent.add_vm(name, [NicSpec("dvs1", "lan", MAC[name])])).ports[0]


async def test_local_session_follows_a_vm_plugged_after_the_config(bus_kit) -> None:
    s = DvVspanSession("span", sources=("a.eth0",), destination="mon.eth0", sampling_rate=2,
                       normal_traffic_allowed=False)
    async with lab(bus_kit, config(1, (s,))) as (mp, ag):
        mon = await vm(ag["esx1"], "mon")
        a = await vm(ag["esx1"], "a")  # the source comes after the destination
        b = await vm(ag["esx1"], "b")
        for seq in range(4):
            a.vnic.send(echo(b.mac, a.mac, 1, seq))
        got = [await recv(mon) for _ in range(2)]  # 1 in 2 of a's 4 frames in: 1st and 3rd
        assert [int.from_bytes(f[15:19], "big") for f in got] == [0, 2]
        await asyncio.sleep(0.2)
        assert mon.vnic.drain() == []
        assert len(b.vnic.drain()) == 4  # the originals all arrived
        sess = ag["esx1"].proxies["dvs1"].switch.mirror_sessions["span"]
        assert (sess.counters.offered, sess.counters.mirrored) == (4, 2)
        b.vnic.send(echo(mon.mac, b.mac, 1, 9))  # normal traffic to the destination: refused
        await asyncio.sleep(0.2)
        assert mon.vnic.drain() == [] and mon.counters.drops["mirror-destination"] == 1
        # vCenter removes the session: mon is an ordinary port again
        await mp.publish(config(2))
        await mp.wait_applied("dvs1", 2, within_s=T)
        b.vnic.send(echo(mon.mac, b.mac, 1, 10))
        assert await recv(mon) == echo(mon.mac, b.mac, 1, 10)
        a.vnic.send(echo(b.mac, a.mac, 1, 11))
        assert await recv(b) == echo(b.mac, a.mac, 1, 11)
        await asyncio.sleep(0.2)
        assert mon.vnic.drain() == []


async def test_rspan_and_erspan_cross_hosts(bus_kit) -> None:
    sessions = (
        DvVspanSession("rs", "remoteMirrorSource", sources=("a.eth0",), encapsulation_vlan=999),
        DvVspanSession("rd", "remoteMirrorDest", vlans=(999,), destination="mon.eth0"),
        DvVspanSession("er", "encapsulatedRemoteMirrorSource", sources=("a.eth0",),
                       direction="ingress", destination="10.0.0.9", source_ip="10.0.0.250",
                       destination_mac=MAC["col"], encapsulation="erspan2", erspan_id=7,
                       encapsulation_vlan=10),
    )
    async with lab(bus_kit, config(1, sessions)) as (_, ag):
        mon = await vm(ag["esx2"], "mon")
        col = await vm(ag["esx2"], "col")
        a = await vm(ag["esx1"], "a")
        assert 999 in ag["esx2"].links["dvs1"].vlans
        f = echo(BCAST, a.mac, 1, 1)
        a.vnic.send(f)
        # mon gets the RSPAN copy (original VLAN 10 tag inside, RSPAN tag gone) and no more
        rs = await recv(mon)
        assert rs[12:16] == b"\x81\x00\x00\x0a" and rs[:12] + rs[16:] == f
        got = [await recv(col) for _ in range(2)]  # the broadcast itself, and the ERSPAN copy
        enc = [g for g in got if g[12:14] == b"\x08\x00"]
        assert len(enc) == 1
        d = decapsulate(enc[0])
        assert (d.encapsulation, d.session_id, d.vlan) == ("erspan2", 7, 10)
        assert d.frame[:12] + d.frame[16:] == f


async def test_ipfix_from_the_vds_reaches_a_loopback_collector(bus_kit) -> None:
    col = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    col.bind(("127.0.0.1", 0))
    col.setblocking(False)
    port = col.getsockname()[1]
    try:
        async with lab(bus_kit, config(1, ipfix=IpfixConfig("127.0.0.1", port, 3))) as (mp, ag):
            a = await vm(ag["esx1"], "a")
            b = await vm(ag["esx1"], "b")
            ip = bytes.fromhex("45000026000040004011") + bytes(2) + bytes([10, 0, 0, 1]) + \
                bytes([10, 0, 0, 2]) + bytes.fromhex("1388003500120000") + bytes(10)
            for _ in range(3):
                a.vnic.send(b.mac + a.mac + b"\x08\x00" + ip)
            await asyncio.sleep(0.2)
            meter = ag["esx1"].proxies["dvs1"].switch.flow_meter
            assert meter is not None and meter.counters.metered == 3
            await mp.publish(config(2))  # IPFIX off: the exporter sends what it has, stops
            await mp.wait_applied("dvs1", 2, within_s=T)
            data = b""
            deadline = asyncio.get_running_loop().time() + 15  # generous: bounds a hang only
            while not data and asyncio.get_running_loop().time() < deadline:
                with contextlib.suppress(BlockingIOError):
                    data = col.recv(65535)
                    break
                await asyncio.sleep(0.05)
    finally:
        col.close()
    (rec,) = IpfixDecoder().decode(data, "esx1").records
    assert (rec["sourceIPv4Address"], rec["destinationIPv4Address"], rec["packetDeltaCount"],
            rec["octetDeltaCount"], rec["sourceTransportPort"], rec["destinationTransportPort"],
            rec["vlanId"]) == ("10.0.0.1", "10.0.0.2", 3, 3 * 38, 5000, 53, 10)


def test_the_topology_sessions_and_ipfix_become_the_vds_ones() -> None:
    from pathlib import Path

    from netsim.lab.topology import load_topology
    from netsim.vds.host import vds_from_topology

    topo = load_topology(Path(__file__).parents[2] / "topologies" / "esxi-mirror.yaml")
    v = vds_from_topology(topo)
    s = {x.name: x for x in v.vspan_sessions}
    assert set(s) == {"web-rspan", "db-erspan", "from-rspan"}
    collector = next(f for vm in topo.vms for f in vm.vifs if vm.name == "collector")
    assert s["db-erspan"].destination_mac == collector.mac
    assert (s["db-erspan"].encapsulation, s["db-erspan"].sampling_rate) == ("erspan3", 2)
    assert v.ipfix == topo.host("esx1").switch("dvs1").ipfix  # esx2 sets none: one vDS setting
    assert VdsConfig.from_json(v.to_json()) == v


@pytest.mark.parametrize(("given", "expected"), [({}, False), ({"normal_traffic_allowed": True},
                                                               True)])
def test_an_unset_normal_traffic_allowed_in_the_pushed_config_is_false(given: dict,
                                                                       expected: bool) -> None:
    """`VMwareVspanSession.normalTrafficAllowed` unset = false: the destination port of a
    session pushed without it carries mirrored frames only (vSphere Client: Disallowed)."""
    from netsim.vds.monitoring import parse_sessions

    (s,) = parse_sessions([{"name": "span", "sources": ["a.eth0"], "destination": "mon.eth0",
                            **given}], "vdsconfig.vspan_sessions", ())
    assert s.normal_traffic_allowed is expected
