"""The vDS LAG in the configuration pushed over MQTT (`VMwareDvsLacpGroupConfig` in the
`hvsim.vds/1` document): round trip, one clear error per bad field, taken from the topology,
and applied by a host's proxy switch as one hashed uplink in the teaming order."""
from __future__ import annotations

import json

import pytest

from netsim.dataplane.policy import LoadBalancing
from netsim.errors import ConfigError
from netsim.lab.topology import load_topology
from netsim.vds.dswitch import _teaming
from netsim.vds.host import vds_from_topology
from netsim.vds.vdsconfig import DvLag, DvPortGroup, DvTeaming, VdsConfig
from tests.topology.conftest import TOPOLOGIES

GOOD = VdsConfig(
    "dvs1", 2, uplinks=("uplink1", "uplink2", "uplink3"),
    portgroups=(DvPortGroup("web", 30, teaming=DvTeaming("port-id", ("lag1",), ("uplink3",))),),
    hosts={"esx1": {"uplink1": "vmnic0", "uplink2": "vmnic1", "uplink3": "vmnic2"}},
    lags=(DvLag("lag1", ("uplink1", "uplink2"), "active", "srcDestIp", "fast"),),
)


def test_round_trip() -> None:
    assert VdsConfig.from_json(GOOD.to_json()) == GOOD
    doc = json.loads(GOOD.to_json())
    assert doc["lags"] == [{"name": "lag1", "uplinks": ["uplink1", "uplink2"], "mode": "active",
                            "load_balance": "srcDestIp", "timeout": "fast"}]
    old = json.loads(GOOD.to_json())
    del old["lags"]  # a document from before LAGs: none
    old["portgroups"][0]["teaming"] = None
    assert VdsConfig.from_json(json.dumps(old).encode()).lags == ()


def bad(**lag) -> bytes:
    doc = json.loads(GOOD.to_json())
    doc["lags"][0].update(lag)
    doc["portgroups"][0]["teaming"] = None
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("doc", "message"), [
    (bad(mode="on"), r"dvs1\.lags\[0\]\.mode: 'on' not one of \('active', 'passive'\)"),
    (bad(timeout="medium"), r"dvs1\.lags\[0\]\.timeout: 'medium'"),
    (bad(load_balance="roundRobin"), r"dvs1\.lags\[0\]\.load_balance: 'roundRobin'"),
    (bad(uplinks=["uplink1"]), r"lags\[0\]\.uplinks: a LAG bundles at least two uplinks"),
    (bad(uplinks=["uplink1", "uplink9"]), r"lags\[0\]\.uplinks: 'uplink9' is not one of"),
    (bad(name="uplink3"), r"lags\[0\]\.name: 'uplink3' is empty or already a name here"),
    (bad(uplinks="uplink1"), r"lags\[0\]\.uplinks: 'uplink1' is not list"),
])
def test_bad_lag_fields_are_named(doc: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VdsConfig.from_json(doc, "vds config")


def test_the_topologys_lag_becomes_the_vds_lag_and_the_proxy_hashes_over_it() -> None:
    vds = vds_from_topology(load_topology(TOPOLOGIES / "lacp-lag.yaml"), switch=None)
    assert vds.lags == (DvLag("lag1", ("uplink1", "uplink2"), "active",
                              "srcDestIpTcpUdpPortVlan", "fast"),)
    assert VdsConfig.from_json(vds.to_json()) == vds
    # on a proxy switch: the LAG's NICs active, hashed per frame; the rest as they were
    policy = _teaming(GOOD.portgroups[0].teaming, GOOD.hosts["esx1"],
                      {lag.name: lag.uplinks for lag in GOOD.lags})
    assert policy is not None
    assert (policy.active, policy.standby, policy.load_balancing) == (
        ("vmnic0", "vmnic1"), ("vmnic2",), LoadBalancing.IP_HASH)
