"""Beacon probing and load-based teaming in the vDS configuration: parsed, carried over MQTT as
JSON, and started (and stopped) on the proxy switches by a config push."""
from __future__ import annotations

import contextlib

import pytest

from netsim.dataplane.policy import FailureDetection, LoadBalancing
from netsim.errors import ConfigError
from netsim.lab.fabric import Fabric
from netsim.vds.dswitch import ManagementPlane
from netsim.vds.host import HostAgent
from netsim.vds.transport.memory import MemoryBroker, MemoryBus
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import DvPortGroup, DvTeaming, VdsConfig

TOPICS = Topics("lab")
T = 10.0


def config(version: int, teaming: DvTeaming | None) -> VdsConfig:
    return VdsConfig(
        "dvs1", version, uplinks=("uplink1", "uplink2", "uplink3"),
        portgroups=(DvPortGroup("App", 100, teaming=teaming),),
        hosts={"esx1": {"uplink1": "vmnic0", "uplink2": "vmnic1", "uplink3": "vmnic2"}})


def test_failure_detection_and_load_based_round_trip_through_json() -> None:
    c = config(1, DvTeaming("load-based", failure_detection="beacon"))
    back = VdsConfig.from_json(c.to_json())
    assert back == c and back.portgroups[0].teaming.failure_detection == "beacon"
    raw = c.to_json().replace(b'"beacon"', b'"arp"')
    with pytest.raises(ConfigError, match="failure_detection: 'arp' not one of"):
        VdsConfig.from_json(raw)


async def test_a_push_starts_and_a_later_push_stops_the_team_monitors() -> None:
    broker = MemoryBroker()
    async with contextlib.AsyncExitStack() as stack:
        vc = await stack.enter_async_context(MemoryBus(broker, client_id="vcenter"))
        mp = await stack.enter_async_context(ManagementPlane(vc, TOPICS))
        fab = await stack.enter_async_context(Fabric())
        bus = await stack.enter_async_context(
            MemoryBus(broker, client_id="esx1", presence_topic=TOPICS.presence("esx1")))
        agent = await stack.enter_async_context(HostAgent(fab, "esx1", bus, TOPICS, session=1))
        await mp.publish(config(1, DvTeaming("load-based", failure_detection="beacon")))
        await agent.wait_config("dvs1", 1, within_s=T)
        sw = agent.proxies["dvs1"].switch
        t = sw.port_groups["App"].teaming
        assert t.load_balancing is LoadBalancing.LOAD_BASED
        assert t.failure_detection is FailureDetection.BEACON
        probe, lbt = sw.beacon_probe, sw.lbt
        assert probe is not None and lbt is not None
        assert [u.name for u in probe.members()] == ["vmnic0", "vmnic1", "vmnic2"]
        await mp.publish(config(2, DvTeaming("port-id")))
        await agent.wait_config("dvs1", 2, within_s=T)
        assert sw.beacon_probe is None and sw.lbt is None
        assert probe.closed and lbt.closed and sw.control_listeners == []
