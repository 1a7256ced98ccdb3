"""Private VLANs from topology YAML and the builder: parsed, refused with one clear line,
built into the switches, drawn."""
from __future__ import annotations

import pytest

from netsim.dataplane.pvlan import PvlanType
from netsim.errors import TopologyError
from netsim.lab.draw import to_dot
from netsim.lab.lab import Lab
from netsim.lab.topology import TopologyBuilder, load_topology, parse_topology
from tests.topology.conftest import TOPOLOGIES

ESX = """hosts:
  esx1:
    type: TYPE
    pifs: {vmnic0: {}}
    switches:
      dvs1:
        uplinks: [vmnic0]
        pvlans: PVLANS
"""


@pytest.mark.parametrize(
    ("htype", "pvlans", "error"),
    [
        ("esxi", "{100: {101: isolated, 102: isolated}}",
         r"t\.yaml:8: hosts\.esx1\.switches\.dvs1\.pvlans\[100\]: .*already has isolated"),
        ("esxi", "{100: {101: private}}", r"t\.yaml:8: .*pvlans\[100\]: .*'private' is not one"),
        ("esxi", "{100: {100: isolated}}", r"only the promiscuous secondary"),
        ("esxi", "{4095: {}}", r"pvlans\[4095\]: VLAN ID 4095 out of range 1-4094"),
        ("esxi", "[100, 101]", r"pvlans: expected a mapping like \{100:"),
        ("esxi", "{100: {101: community}, 200: {101: isolated}}", r"listed twice"),
        ("xen", "{100: {101: isolated}}", r"pvlans: private VLANs are a vSphere distributed"),
    ],
)
def test_bad_pvlan_maps_name_file_line_and_key(htype: str, pvlans: str, error: str) -> None:
    text = ESX.replace("TYPE", htype).replace("PVLANS", pvlans)
    with pytest.raises(TopologyError, match=error):
        parse_topology(text, "t.yaml")


def test_yaml_and_builder_give_the_same_model() -> None:
    from_file = load_topology(TOPOLOGIES / "esxi-pvlan.yaml")
    t = TopologyBuilder("esxi-pvlan", seed=3)
    for h in ("esx1", "esx2"):
        t.add_host(h, type="esxi", pifs=["vmnic0"])
        t.add_switch(h, "dvs1", uplinks=["vmnic0"],
                     pvlans={100: {101: "isolated", 102: "community"}})
    built = t.build()
    assert built.host("esx1").switch("dvs1").pvlans == \
        from_file.host("esx1").switch("dvs1").pvlans == (
            (100, 100, "promiscuous"), (100, 101, "isolated"), (100, 102, "community"))
    assert from_file.physical[0].pvlans == from_file.host("esx2").switch("dvs1").pvlans


async def test_the_lab_switches_carry_the_map_and_the_trunk_carries_secondaries() -> None:
    topo = load_topology(TOPOLOGIES / "esxi-pvlan.yaml")
    async with Lab(topo) as lab:
        sw = lab.fabric["esx1/dvs1"]
        tor = lab.fabric["tor"]
        assert sw.pvlan.entry(101).type is PvlanType.ISOLATED
        assert tor.pvlan == sw.pvlan
        iso3 = lab.fabric["esx2/iso3.eth0"]
        assert (await lab.ping("iso1", "gw")).replied
        before = iso3.counters.tx_frames
        assert not (await lab.ping("iso1", "iso3")).replied  # isolated, across hosts too
        assert iso3.counters.tx_frames == before  # not even its ARP request got there
        assert (await lab.ping("web1", "web2")).replied  # the community, across hosts


def test_draw_shows_the_pvlan_type_of_each_port_group() -> None:
    dot = to_dot(load_topology(TOPOLOGIES / "esxi-pvlan.yaml"))
    assert 'label="dmz-isolated\\nPVLAN 101 isolated (primary 100)"' in dot
    assert 'label="dmz-gw\\nPVLAN 100 promiscuous"' in dot
    assert 'label="tor\\nPVLAN 100: 101 isolated, 102 community"' in dot
