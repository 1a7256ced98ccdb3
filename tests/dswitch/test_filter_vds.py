"""Traffic filtering and marking and egress shaping on a distributed switch: the rules travel in
the vDS config (over the in-process bus and mosquitto), every proxy switch applies them, and a
frame marked on one host arrives marked on the other."""
from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from netsim.dataplane.filtering import ruleset_from_doc
from netsim.errors import ConfigError
from netsim.lab.fabric import Fabric
from netsim.vds.dswitch import ManagementPlane, ProxySwitch
from netsim.vds.host import HostAgent, NicSpec
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import DvPortGroup, DvShaping, VdsConfig

from .test_host import recv, sees

T = 10.0
TOPICS = Topics("lab")
RULES = ruleset_from_doc([
    {"sequence": 10, "action": "tag", "dscp": 46, "direction": "incomingPackets",
     "description": "voice", "ip": {"protocol": "udp", "dst_port": 5060}},
    {"sequence": 20, "action": "drop", "ip": {"protocol": "udp", "dst_port": 9}},
])


def config(version: int, rules=RULES) -> VdsConfig:
    return VdsConfig("dvs1", version, portgroups=(DvPortGroup("App", 100, traffic_rules=rules),),
                     hosts={h: {"uplink1": "vmnic0"} for h in ("esx1", "esx2")})


def udp(dst: str, src: str, dport: int) -> bytes:
    return bytes(Ether(dst=dst, src=src) / IP(src="10.0.0.1", dst="10.0.0.2") /
                 UDP(sport=5060, dport=dport) / bytes(20))


def test_rules_round_trip_in_the_document_and_bad_ones_name_the_path() -> None:
    c = config(2)
    assert VdsConfig.from_json(c.to_json()) == c
    doc = json.loads(c.to_json())
    assert doc["portgroups"][0]["traffic_rules"]["rules"][0]["dscp"] == 46
    doc["portgroups"][0]["traffic_rules"]["rules"][1]["action"] = "punt"
    with pytest.raises(ConfigError, match=r"portgroups\[App\]\.traffic_rules\[1\]: .*'punt'"):
        VdsConfig.from_json(json.dumps(doc).encode())


def test_egress_shaping_reaches_ports_attached_after_the_config() -> None:
    fab = Fabric()
    host = fab.add_host("esx1")
    proxy = ProxySwitch(host, "dvs1")
    shape = DvShaping(1_000_000, 2_000_000, 10_000)
    proxy.apply(VdsConfig("dvs1", 1, portgroups=(DvPortGroup("App", 100, shaping_in=shape),),
                          hosts={"esx1": {"uplink1": "vmnic0"}}))
    port = host.add_vm("late").add_nic(proxy.switch, "App")  # after the config arrived
    assert port.sw_egress_shaper is not None and port.sw_egress_shaper.policy.average_bps == \
        1_000_000


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


async def test_a_frame_marked_on_one_host_arrives_marked_on_the_other(bus_kit) -> None:
    async with lab(bus_kit) as (mp, ag):
        a = (await ag["esx1"].add_vm("a", [NicSpec("dvs1", "App", "00:50:56:00:00:01")])).ports[0]
        b = (await ag["esx2"].add_vm("b", [NicSpec("dvs1", "App", "00:50:56:00:00:02")])).ports[0]
        await sees(ag["esx1"], "esx2", 100)
        dst, src = "00:50:56:00:00:02", "00:50:56:00:00:01"
        a.vnic.send(udp(dst, src, 9))  # dropped by rule 20 on esx1
        a.vnic.send(udp(dst, src, 5060))
        got = await recv(b)
        assert Ether(got)[IP].tos >> 2 == 46
        assert a.counters.drops == {"filtered": 1}
        assert ag["esx1"].proxies["dvs1"].switch.rule_counters()[a.name]["in"] == {10: 1, 20: 1}
        # vCenter removes the rules: the next frame goes through untouched
        await mp.publish(config(2, rules=None))
        await mp.wait_applied("dvs1", 2, within_s=T)
        a.vnic.send(udp(dst, src, 9))
        assert Ether(await recv(b))[UDP].dport == 9
        await asyncio.sleep(0)


UPLINK_RULES = ruleset_from_doc([
    {"sequence": 10, "action": "drop", "direction": "outgoingPackets",
     "ip": {"protocol": "udp", "dst_port": 9}},
    {"sequence": 20, "action": "drop", "direction": "incomingPackets",
     "ip": {"protocol": "tcp", "tcp_flags": "0x02/0x12"}},
])


def test_uplink_rules_round_trip_in_the_document_and_bad_ones_name_the_path() -> None:
    from dataclasses import replace

    c = replace(config(3, rules=None), uplink_traffic_rules=UPLINK_RULES)
    assert VdsConfig.from_json(c.to_json()) == c
    doc = json.loads(c.to_json())
    assert doc["uplink_traffic_rules"]["rules"][1]["ip"]["tcp_flags"] == "0x02/0x12"
    assert json.loads(config(3).to_json())["uplink_traffic_rules"] is None
    doc["uplink_traffic_rules"]["rules"][0]["ip"]["dst_port"] = 70000
    with pytest.raises(ConfigError, match=r"uplink_traffic_rules\[0\]: ip.dst_port: 70000"):
        VdsConfig.from_json(json.dumps(doc).encode())


async def test_uplink_port_group_rules_apply_on_every_member_host(bus_kit) -> None:
    from dataclasses import replace

    async with lab(bus_kit) as (mp, ag):
        a = (await ag["esx1"].add_vm("a", [NicSpec("dvs1", "App", "00:50:56:00:00:01")])).ports[0]
        b = (await ag["esx2"].add_vm("b", [NicSpec("dvs1", "App", "00:50:56:00:00:02")])).ports[0]
        await sees(ag["esx1"], "esx2", 100)
        await mp.publish(replace(config(2, rules=None), uplink_traffic_rules=UPLINK_RULES))
        await mp.wait_applied("dvs1", 2, within_s=T)
        dst, src = "00:50:56:00:00:02", "00:50:56:00:00:01"
        a.vnic.send(udp(dst, src, 9))  # leaves esx1's uplink: rule 10 drops it there
        a.vnic.send(udp(dst, src, 5060))
        assert Ether(await recv(b))[UDP].dport == 5060
        up1 = ag["esx1"].proxies["dvs1"].uplinks["uplink1"]
        assert up1.counters.drops == {"filtered": 1} and a.counters.drops == {}
        for agent in ag.values():  # every proxy switch carries the uplink port group's rules
            assert agent.proxies["dvs1"].switch.uplink_rules == UPLINK_RULES
        await asyncio.sleep(0)
