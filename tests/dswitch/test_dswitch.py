"""Distributed switch control and data plane, the same cases on the in-process bus and mosquitto."""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import pytest

from netsim.clock import ManualClock
from netsim.errors import ConfigError
from netsim.vds.dswitch import HostPlane, ManagementPlane, Peers, ProxyLink, RemoteMacTable
from netsim.vds.transport.batch import encode_batch
from netsim.vds.transport.bus import BusMessage
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import DvPortGroup, VdsConfig

T = 15.0  # must-arrive waits: generous, they only bound a hang (CI machines are loaded)
TOPICS = Topics("lab")


def mac(n: int) -> bytes:
    return bytes([0x00, 0x16, 0x3E, 0, 0, n])


def frame(dst: bytes, src: bytes, vid: int = 0) -> bytes:
    """A frame as it leaves a proxy switch's uplink: tagged unless VLAN 0."""
    tag = b"\x81\x00" + vid.to_bytes(2, "big") if vid else b""
    return dst + src + tag + b"\x08\x00" + bytes(46)


BCAST = b"\xff" * 6


def dvs(version: int = 1, hosts=("esx1", "esx2", "esx3"), **vlans: int) -> VdsConfig:
    pgs = tuple(DvPortGroup(n, v) for n, v in (vlans or {"App": 100, "DB": 200}).items())
    members = {h: {"uplink1": "vmnic0"} for h in hosts}
    return VdsConfig("dvs1", version, portgroups=pgs, hosts=members)


@dataclass
class Host:
    """A host's management and data plane with a recording proxy-switch side."""

    name: str
    ports: dict[str, int]  # local VM ports: port group each is on
    plane: HostPlane | None = None
    link: ProxyLink | None = None
    got: list[tuple[int, bytes]] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)

    async def apply(self, cfg: VdsConfig) -> frozenset[int]:
        self.applied.append(cfg.version)
        return frozenset(cfg.portgroup(pg).vlan for pg in self.ports)

    async def rx(self, n: int) -> list[tuple[int, bytes]]:
        async def wait() -> None:
            while len(self.got) < n:  # noqa: ASYNC110 - polling a list a callback fills
                await asyncio.sleep(0.005)

        await asyncio.wait_for(wait(), T)
        return self.got


@contextlib.asynccontextmanager
async def fabric(bus_kit, hosts: dict[str, dict[str, int]], config: VdsConfig):
    """A vCenter and hosts with their links; config published and applied everywhere."""
    async with contextlib.AsyncExitStack() as stack:
        vc_bus = await stack.enter_async_context(bus_kit.make("vcenter"))
        mp = await stack.enter_async_context(ManagementPlane(vc_bus, TOPICS))
        out: dict[str, Host] = {}
        for i, (name, ports) in enumerate(hosts.items()):
            h = Host(name, ports)
            bus = await stack.enter_async_context(
                bus_kit.make(name, presence_topic=TOPICS.presence(name))
            )
            h.plane = await stack.enter_async_context(
                HostPlane(bus, TOPICS, host=name, session=i + 1, apply=h.apply)
            )
            h.link = ProxyLink(bus, TOPICS, host=name, vds="dvs1", peers=h.plane.peers,
                               clock=ManualClock(), deliver=lambda v, f, h=h: h.got.append((v, f)),
                               session=i + 1)
            await stack.enter_async_context(h.link)
            h.plane.attach_link(h.link)
            out[name] = h
        await mp.publish(config)
        await mp.wait_applied("dvs1", config.version, set(hosts), within_s=T)
        for h in out.values():  # every host has heard every other host's status
            p = h.plane.peers
            await p.wait_until(
                lambda p=p: all(p.version(o, "dvs1") == config.version for o in hosts),
                within_s=T, what="statuses",
            )
        yield mp, out


async def test_config_change_reaches_every_host_live(bus_kit) -> None:
    hosts = {"esx1": {"App": 0}, "esx2": {"App": 0}, "esx3": {"DB": 0}}
    async with fabric(bus_kit, hosts, dvs(1)) as (mp, hs):
        assert [h.applied for h in hs.values()] == [[1], [1], [1]]
        await mp.publish(dvs(2, App=300, DB=200))
        await mp.wait_applied("dvs1", 2, within_s=T)
        assert [h.applied for h in hs.values()] == [[1, 2], [1, 2], [1, 2]]
        assert hs["esx1"].plane.vlans["dvs1"] == {300}
        assert hs["esx1"].link.vlans == {300}  # flood subscriptions follow the new VLAN
        with pytest.raises(ConfigError, match="not newer"):
            await mp.publish(dvs(2))


async def test_same_vlan_crosses_hosts_other_vlans_do_not(bus_kit) -> None:
    hosts = {"esx1": {"App": 0}, "esx2": {"App": 0, "DB": 0}, "esx3": {"DB": 0}}
    async with fabric(bus_kit, hosts, dvs(1)) as (_, hs):
        e1, e2, e3 = hs["esx1"], hs["esx2"], hs["esx3"]
        # app1 on esx1 broadcasts (ARP who-has) in VLAN 100: only esx2 has VLAN 100
        await e1.link.send(frame(BCAST, mac(1), 100))
        await e1.link.flush()
        assert await e2.rx(1) == [(100, frame(BCAST, mac(1), 100))]
        assert e2.link.remote.lookup(100, mac(1)) == "esx1"
        # the reply goes unicast to esx1 only, not flooded
        await e2.link.send(frame(mac(1), mac(2), 100))
        await e2.link.flush()
        assert await e1.rx(1) == [(100, frame(mac(1), mac(2), 100))]
        assert e2.link.counters.tx_unicast == 1
        # db3 on esx3 broadcasts in VLAN 200: esx2 gets it, esx1 (no VLAN 200 port) never does
        await e3.link.send(frame(BCAST, mac(3), 200))
        await e3.link.flush()
        assert (await e2.rx(2))[1] == (200, frame(BCAST, mac(3), 200))
        # esx1 has nobody else in VLAN 300: nothing is published, and that is counted
        await e1.link.send(frame(BCAST, mac(1), 300))
        assert e1.link.counters.tx_no_remote_member == 1
        await asyncio.sleep(0.2)
        assert e1.got == [(100, frame(mac(1), mac(2), 100))] and e3.got == []


async def test_a_frame_for_a_vlan_without_local_ports_is_refused(bus_kit) -> None:
    hosts = {"esx1": {"App": 0}, "esx3": {"DB": 0}}
    async with fabric(bus_kit, hosts, dvs(1)) as (_, hs):
        e1, e3 = hs["esx1"], hs["esx3"]
        # esx1 learned nothing about mac(3); make it unicast a VLAN-100 frame straight to esx3
        e1.link.remote.learn(100, mac(3), "esx3")
        await e1.link.send(frame(mac(3), mac(1), 100))
        await e1.link.flush()
        async def refused() -> None:
            while e3.link.counters.rx_vlan_not_local == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        await asyncio.wait_for(refused(), T)
        assert e3.got == []
        # a batch whose record claims VLAN 200 (esx3 has it) for a frame tagged 100 is refused
        bad = encode_batch("esx1", 9, 0, [(200, frame(mac(3), mac(1), 100))])
        await e1.link.bus.publish(TOPICS.unicast("esx1", "esx3", "dvs1"), bad)
        async def mismatch() -> None:
            while e3.link.counters.rx_vlan_mismatch == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        await asyncio.wait_for(mismatch(), T)
        assert e3.got == []


async def test_killed_host_goes_down_and_peers_stop_flooding_to_it(bus_kit) -> None:
    hosts = {"esx1": {"App": 0}, "esx2": {"App": 0}}
    async with fabric(bus_kit, hosts, dvs(1, hosts=("esx1", "esx2"))) as (mp, hs):
        e1, e2 = hs["esx1"], hs["esx2"]
        await e2.link.send(frame(BCAST, mac(2), 100))
        await e2.link.flush()
        await e1.rx(1)
        assert e1.link.remote.lookup(100, mac(2)) == "esx2"
        await e2.link.bus.abort()  # esx2 crashes; the broker publishes its will
        for peers in (e1.plane.peers, mp.peers):
            await peers.wait_until(
                lambda p=peers: "esx2" not in p.online(), within_s=T, what="esx2 down"
            )
        assert e1.link.remote.lookup(100, mac(2)) is None  # its MACs are forgotten
        await e1.link.send(frame(BCAST, mac(1), 100))
        await e1.link.send(frame(mac(2), mac(1), 100))
        assert e1.link.counters.tx_no_remote_member == 2 and e1.link.counters.tx_flood == 0


async def test_bad_and_foreign_configs_are_counted_not_applied(bus_kit) -> None:
    hosts = {"esx1": {"App": 0}}
    async with fabric(bus_kit, hosts, dvs(1, hosts=("esx1",))) as (_, hs):
        plane = hs["esx1"].plane
        topic = TOPICS.vds_config("dvs1")
        await plane.handle_config(BusMessage(topic, b"{not json"))
        await plane.handle_config(BusMessage(topic, dvs(5, hosts=("h9",)).to_json()))
        await plane.handle_config(BusMessage(topic, dvs(1, hosts=("esx1",)).to_json()))
        c = plane.counters
        assert (c.refused, c.not_member, c.stale, c.applied) == (1, 1, 1, 1)
        assert "not JSON" in c.last_error
        assert hs["esx1"].applied == [1]


def test_remote_mac_table_ages_moves_and_evicts_fairly() -> None:
    clock = ManualClock()
    t = RemoteMacTable(clock, capacity=3, aging_s=300)
    t.learn(1, mac(1), "a")
    t.learn(1, mac(2), "a")
    t.learn(1, mac(3), "b")
    t.learn(1, mac(4), "b")  # full: evict the oldest entry of the host holding the most (a)
    assert t.lookup(1, mac(1)) is None and t.evictions == 1
    t.learn(1, mac(3), "a")  # moved (a migration)
    assert t.lookup(1, mac(3)) == "a" and t.moves == 1
    assert t.lookup(2, mac(3)) is None  # keyed on (VLAN, MAC)
    clock.advance(301)
    assert t.lookup(1, mac(4)) is None  # aged out
    assert t.forget_host("a") == 2 and len(t) == 0


def test_peers_ignore_malformed_status() -> None:
    p = Peers(TOPICS)
    p.handle(BusMessage(TOPICS.status("esx1"), b'{"vds": 3}'))
    p.handle(BusMessage(TOPICS.presence("esx1"), b"online"))
    assert p.bad_status == 1 and p.online() == {"esx1"}
    assert p.flood_targets("dvs1", 100, exclude="esx2") == set()


async def test_agents_sharing_a_view_decode_each_config_once_and_late_ones_catch_up(
        bus_kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """Host planes of one process on a shared `FabricView`: one decode per published config
    (not one per agent), every member applies it, a plane that attaches later gets the latest
    one, a bad document is refused on every plane, and the peers are the view's."""
    from netsim.vds import dswitch

    decodes = 0
    real = VdsConfig.from_json

    def counting(data: bytes, *, source: str) -> VdsConfig:
        nonlocal decodes
        decodes += 1
        return real(data, source=source)

    monkeypatch.setattr(dswitch.VdsConfig, "from_json", staticmethod(counting))
    async with contextlib.AsyncExitStack() as stack:
        vc = await stack.enter_async_context(bus_kit.make("vcenter"))
        mp = await stack.enter_async_context(ManagementPlane(vc, TOPICS))
        shared = await stack.enter_async_context(bus_kit.make("view"))
        view = await stack.enter_async_context(dswitch.FabricView(shared, TOPICS))
        hosts = {n: Host(n, {"App": 0}) for n in ("esx1", "esx2", "esx3")}

        async def join(h: Host, i: int) -> None:
            bus = await stack.enter_async_context(
                bus_kit.make(h.name, presence_topic=TOPICS.presence(h.name)))
            h.plane = await stack.enter_async_context(
                HostPlane(bus, TOPICS, host=h.name, session=i, apply=h.apply, view=view))

        await join(hosts["esx1"], 1)
        await join(hosts["esx2"], 2)
        await mp.publish(dvs(1))
        await mp.wait_applied("dvs1", 1, {"esx1", "esx2"}, within_s=T)
        await join(hosts["esx3"], 3)  # attaches after the push: takes the retained latest
        await mp.wait_applied("dvs1", 1, within_s=T)
        assert [h.applied for h in hosts.values()] == [[1], [1], [1]]
        assert decodes == 1
        assert all(h.plane.peers is view.peers for h in hosts.values())
        await view.peers.wait_until(lambda: view.peers.online() == set(hosts), within_s=T,
                                    what="presence")
        await vc.publish(TOPICS.vds_config("dvs1"), b"{not json", qos=1, retain=True)

        async def refused() -> None:
            while not all(h.plane.counters.refused == 1 for h in hosts.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        await asyncio.wait_for(refused(), T)
        assert view.bad_configs == 1 and decodes == 2
        assert [h.applied for h in hosts.values()] == [[1], [1], [1]]  # still running v1
