"""The vDS configuration document: round trip and errors that name the field."""
from __future__ import annotations

import json

import pytest

from netsim.errors import ConfigError
from netsim.vds.vdsconfig import (
    DvLinkDiscovery,
    DvPortGroup,
    DvSecurity,
    DvShaping,
    DvTeaming,
    VdsConfig,
)

GOOD = VdsConfig(
    "dvs1",
    3,
    uplinks=("uplink1", "uplink2"),
    portgroups=(
        DvPortGroup("App", 100, DvSecurity(promiscuous=True), DvShaping(10**6, 2 * 10**6, 4096),
                    None, DvTeaming("failover", ("uplink1",), ("uplink2",))),
        DvPortGroup("Trunk", 4095),
    ),
    hosts={"esx1": {"uplink1": "vmnic0", "uplink2": "vmnic1"}},
)


def test_round_trip_and_defaults() -> None:
    assert VdsConfig.from_json(GOOD.to_json()) == GOOD
    assert GOOD.portgroup("Trunk").security == DvSecurity(False, False, False)  # vDS: all Reject
    assert GOOD.vlans() == {100, 4095}
    assert GOOD.bumped().version == 4


def test_link_discovery_defaults_to_cdp_listen_and_travels_with_the_config() -> None:
    assert GOOD.link_discovery == DvLinkDiscovery("cdp", "listen")  # vSphere's default
    lldp = GOOD.bumped(link_discovery=DvLinkDiscovery("lldp", "both"))
    doc = json.loads(lldp.to_json())
    assert doc["link_discovery"] == {"protocol": "lldp", "operation": "both"}
    assert VdsConfig.from_json(lldp.to_json()) == lldp


def mutate(path: list, value) -> bytes:
    doc = json.loads(GOOD.to_json())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["portgroups", 0, "vlan"], 4096, r"portgroups\[App\]\.vlan: 4096 outside 0\.\.4095"),
        (["portgroups", 0, "vlan"], "100", r"portgroups\[App\]\.vlan: '100' is not int"),
        (["portgroups", 0, "shaping_in", "peak_bps"], 5, r"shaping_in: peak_bps 5 < average"),
        (["portgroups", 0, "teaming", "active"], ["uplink9"], r"uplink 'uplink9' is not one of"),
        (["portgroups", 1, "name"], "App", r"portgroups\[App\]: port group named twice"),
        (["hosts", "esx1", "uplink7"], "vmnic7", r"hosts\[esx1\]: uplink 'uplink7'"),
        (["version"], 0, r"version: 0 must be ≥ 1"),
        (["schema"], "other/9", r"schema 'other/9'"),
        (["link_discovery", "protocol"], "edp", r"link_discovery\.protocol: 'edp' not one of"),
        (["link_discovery", "operation"], "down", r"link_discovery\.operation: 'down' not one"),
    ],
)
def test_errors_name_the_field(path, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        VdsConfig.from_json(mutate(path, value), source="hvsim/lab/vds/dvs1/config")


def test_not_json() -> None:
    with pytest.raises(ConfigError, match="cfg: not JSON"):
        VdsConfig.from_json(b"\xff{", source="cfg")
    with pytest.raises(ConfigError, match="no distributed port group 'Nope'"):
        GOOD.portgroup("Nope")


def test_vds_from_topology_takes_the_switches_cdp_lldp_setting() -> None:
    from netsim.lab.topology import parse_topology
    from netsim.vds.host import vds_from_topology

    text = """name: t
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]DISC}}
    port_groups: {web: {switch: vSwitch0, vlan: 10}}
"""
    plain = parse_topology(text.replace("DISC", ""), "t.yaml")
    assert vds_from_topology(plain).link_discovery == DvLinkDiscovery("cdp", "listen")
    lldp = parse_topology(text.replace(
        "DISC", ", discovery: {protocol: lldp, operation: advertise}"), "t.yaml")
    assert vds_from_topology(lldp).link_discovery == DvLinkDiscovery("lldp", "advertise")
