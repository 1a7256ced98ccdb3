"""LAGs, bonds and port-channels from topology files: the model with each product's defaults,
one clear error per mistake, and the running lab (negotiation on the lab's clock, reachability,
a member going down, no MAC flapping through a port-channel)."""
from __future__ import annotations

import asyncio

import pytest

from netsim.errors import TopologyError
from netsim.lab.lab import Lab
from netsim.lab.topology import load_topology, parse_topology
from tests.topology.conftest import TOPOLOGIES

HOSTS = """\
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}, vmnic1: {}, vmnic2: {}}
    switches:
      dvs:
        uplinks: [vmnic0, vmnic1, vmnic2]
        %s
  xen1:
    pifs: {eth0: {}, eth1: {}}
    switches:
      xenbr0:
        uplinks: [eth0, eth1]
        %s
"""


def parse(esx: str = "", xen: str = "", physical: str = "") -> object:
    return parse_topology(HOSTS % (esx, xen) + physical, "topology.yaml")


def test_product_defaults() -> None:
    topo = parse("lag: {uplinks: [vmnic0, vmnic1]}", "bond: {}")
    lag = topo.host("esx1").switch("dvs").lag
    assert lag is not None and (lag.name, lag.members) == ("lag1", ("vmnic0", "vmnic1"))
    c = lag.config  # vSphere: passive, slow, srcDestIpTcpUdpPortVlan
    assert (c.mode, c.lacp, c.rate, c.hashing) == ("lacp", "passive", "slow",
                                                  "srcDestIpTcpUdpPortVlan")
    # the LAG is one uplink in the teaming order, beside the NIC left out of it
    assert topo.host("esx1").switch("dvs").teaming.active == ("lag1", "vmnic2")
    bond = topo.host("xen1").switch("xenbr0").lag
    assert bond is not None and bond.name == "bond0" and bond.members == ("eth0", "eth1")
    assert (bond.config.mode, bond.config.rebalance_interval_ms) == ("balance-slb", 10_000)
    lacp = parse(xen="bond: {mode: lacp}").host("xen1").switch("xenbr0").lag
    assert (lacp.config.mode, lacp.config.hashing) == ("lacp", "tcpudp_ports")
    # Marker PDUs: a vSphere LAG answers (802.1AX responder); a XenServer bond is Open
    # vSwitch's, which counts them and does not answer (lib/lacp.c)
    assert (c.marker_responder, lacp.config.marker_responder) == (True, False)
    fb = parse(xen="bond: {mode: lacp, lacp_fallback_ab: true}").host("xen1").switch("xenbr0")
    assert fb.lag.config.lacp_fallback_ab and fb.lag.describe() == \
        "lacp active slow tcpudp_ports fallback-ab"  # as `hvsim draw` labels the bridge


def test_channels_on_the_physical_switch() -> None:
    topo = parse(physical="""\
physical:
  core:
    ports: {xen1.eth0: {}, xen1.eth1: {}}
    channels:
      Po7: {ports: [xen1.eth0, xen1.eth1], mode: "on", load_balance: src-mac}
""")
    (ch,) = topo.physical[0].channels
    assert (ch.name, ch.members, ch.config.mode, ch.config.hashing) == (
        "Po7", ("xen1.eth0", "xen1.eth1"), "static", "srcMac")


BAD = {
    "bond on esxi": ("bond: {}", "", "", "topology.yaml:8: hosts.esx1.switches.dvs.bond: an "
                     "ESXi switch aggregates its uplinks with `lag:`"),
    "lag on xen": ("", "lag: {}", "", "topology.yaml:14: hosts.xen1.switches.xenbr0.lag: a "
                   "XenServer bridge aggregates its PIFs with `bond:`"),
    "bad xen mode": ("", "bond: {mode: balance-tcp}", "", "topology.yaml:14: hosts.xen1.switches."
                     "xenbr0.bond.mode: mode must be one of active-backup, balance-slb, lacp"),
    "hash on slb": ("", "bond: {hashing_algorithm: src_mac}", "",
                    "topology.yaml:14: hosts.xen1.switches.xenbr0.bond.hashing_algorithm: "
                    "hashing_algorithm applies to lacp bonds"),
    "fallback on slb": ("", "bond: {lacp_fallback_ab: true}", "",
                        "topology.yaml:14: hosts.xen1.switches.xenbr0.bond.lacp_fallback_ab: "
                        "lacp_fallback_ab applies to lacp bonds"),
    "fallback not bool": ("", "bond: {mode: lacp, lacp_fallback_ab: maybe}", "",
                          "topology.yaml:14: hosts.xen1.switches.xenbr0.bond.lacp_fallback_ab: "
                          "lacp_fallback_ab must be true or false, got 'maybe'"),
    "fallback on esxi": ("lag: {lacp_fallback_ab: true}", "", "",
                         "topology.yaml:8: hosts.esx1.switches.dvs.lag"),
    "member not uplink": ("lag: {uplinks: [vmnic0, vmnic7]}", "", "",
                          "topology.yaml:8: hosts.esx1.switches.dvs.lag.uplinks[1]: vmnic7 is "
                          "not an uplink of this switch"),
    "one member": ("lag: {uplinks: [vmnic0]}", "", "",
                   "topology.yaml:8: hosts.esx1.switches.dvs.lag: a LAG needs at least two"),
    "bad lb": ("lag: {load_balance: roundRobin}", "", "",
               "topology.yaml:8: hosts.esx1.switches.dvs.lag.load_balance: load_balance must "
               "be one of"),
    "channel no mode": ("", "", "physical:\n  core:\n    ports: {xen1.eth0: {}, xen1.eth1: {}}"
                        "\n    channels: {Po1: {ports: [xen1.eth0, xen1.eth1]}}\n",
                        "topology.yaml:18: physical.core.channels.Po1: a channel needs `mode:`"),
    "channel unknown port": ("", "", "physical:\n  core:\n    ports: {xen1.eth0: {}}\n"
                             "    channels: {Po1: {ports: [xen1.eth0, xen1.eth9], mode: on}}\n",
                             "topology.yaml:18: physical.core.channels.Po1.ports[1]: no port "
                             "'xen1.eth9' on this switch"),
    "channel mismatch": ("", "", "physical:\n  core:\n    ports: {xen1.eth0: {}, xen1.eth1: "
                         "{mode: access, vlan: 5}}\n    channels: {Po1: {ports: [xen1.eth0, "
                         "xen1.eth1], mode: active}}\n",
                         "topology.yaml:18: physical.core.channels.Po1.ports[1]: xen1.eth1 has "
                         "another VLAN mode or MTU than xen1.eth0"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_lag_settings_give_one_clear_error(case: str) -> None:
    esx, xen, physical, expected = BAD[case]
    with pytest.raises(TopologyError) as info:
        parse(esx, xen, physical)
    assert str(info.value).startswith(expected), str(info.value)


def test_an_unbonded_bridge_into_one_switch_is_a_loop_a_bond_or_channel_is_not() -> None:
    phys = "physical:\n  core:\n    ports: {xen1.eth0: {}, xen1.eth1: {}}\n"
    with pytest.raises(TopologyError, match="loop in the physical network"):
        parse(physical=phys)
    parse(xen="bond: {mode: active-backup}", physical=phys)
    parse(physical=phys + "    channels: {Po1: {ports: [xen1.eth0, xen1.eth1], mode: on}}\n")


async def run_for(lab: Lab, seconds: float) -> None:
    async def wait() -> None:
        await lab.clock.sleep(seconds)
    await lab.drive(wait())


async def test_the_example_negotiates_reaches_and_survives_a_member_down() -> None:
    topo = load_topology(TOPOLOGIES / "lacp-lag.yaml")
    async with Lab(topo) as lab:
        await run_for(lab, 5)
        lags = lab.fabric.lags
        assert sorted(lags) == ["core/Po1", "core/Po2", "esx1/lag1", "xen1/bond0"]
        for lag in lags.values():
            assert len(lag.distributing) == 2, lag.status()
        r = await lab.pingall(wait_s=1.0)
        assert r.answered == r.pairs == 6
        # the host's NIC loses its carrier; the switch port does not see it (as when a fibre
        # breaks one way): LACP tells the switch, by the PDUs that stop - within its short
        # timeout (Po1 runs `lacp rate fast`: 3 s)
        lab.set_link("esx1/vmnic0", False)
        await run_for(lab, 1)
        assert [p.name for p in lags["esx1/lag1"].distributing] == ["vmnic1"]
        assert len(lags["core/Po1"].distributing) == 2
        await run_for(lab, 3)
        assert [p.name for p in lags["core/Po1"].distributing] == ["esx1.vmnic1"]
        assert lags["core/Po1"].status()["members"][0]["status"] == "expired"
        r = await lab.pingall(wait_s=1.0)
        assert r.answered == r.pairs == 6
        assert lab.fabric["core"].mac_flaps.total == 0
        await asyncio.sleep(0)


def test_draw_shows_lags_bonds_and_channels() -> None:
    from netsim.lab.draw import to_dot

    dot = to_dot(load_topology(TOPOLOGIES / "lacp-lag.yaml"))
    assert 'label="dvs\\nlag1: lacp active fast srcDestIpTcpUdpPortVlan"' in dot
    assert 'label="xenbr0\\nbond0: lacp active slow tcpudp_ports"' in dot
    assert "Po1: lacp passive fast srcDestIp\\nPo2: lacp active slow srcDestIpTcpUdpPort" in dot
    assert dot.count('label="lag1"]') == 2 and dot.count('label="bond0"]') == 2


def test_builder_makes_the_same_lags_as_the_file() -> None:
    from netsim.lab.topology import TopologyBuilder

    t = (TopologyBuilder("b")
         .add_host("xen1", pifs=["eth0", "eth1"])
         .add_switch("xen1", "xenbr0", uplinks=["eth0", "eth1"],
                     bond={"mode": "lacp", "lacp_time": "fast"})
         .connect("xen1.eth0", "core").connect("xen1.eth1", "core")
         .add_channel("core", "Po1", ["xen1.eth0", "xen1.eth1"], mode="active", rate="fast"))
    topo = t.build()
    bond = topo.host("xen1").switch("xenbr0").lag
    assert (bond.name, bond.config.mode, bond.config.rate) == ("bond0", "lacp", "fast")
    (ch,) = topo.physical[0].channels
    assert (ch.name, ch.config.lacp, ch.config.rate) == ("Po1", "active", "fast")


def test_a_bond_changes_mode_live_as_xe_bond_set_mode() -> None:
    from netsim.dataplane.lag import Lag, LagConfig, LagPort
    from netsim.dataplane.port import Pif
    from tests.net.conftest import sent

    lag = Lag(LagPort("bond0"), LagConfig(mode="active-backup"))
    eth = [Pif("eth0"), Pif("eth1")]
    for p in eth:
        lag.add_member(p)
    frames = [bytes.fromhex("020000000099") + bytes([0, 0x16, 0x3E, 0, 0, i]) + b"\x88\xb5"
              + bytes(46) for i in range(32)]
    for f in frames:
        lag.port.transmit(f)
    assert [len(sent(p)) for p in eth] == [32, 0]
    lag.reconfigure(LagConfig(mode="balance-slb"), 0)
    for f in frames:
        lag.port.transmit(f)
    assert all(len(sent(p)) > 0 for p in eth)  # 32 source MACs now spread over both
    assert lag.next_due_ns() == 10_000_000_000  # balance-slb's rebalancing timer started


def test_a_vlan_network_on_a_bond_is_drawn_on_bond0_vid() -> None:
    from netsim.lab.topology import node_id, to_graph

    g = to_graph(load_topology(TOPOLOGIES / "lacp-lag.yaml"))
    vlanpifs = sorted(d["name"] for _, d in g.nodes(data=True) if d["kind"] == "vlanpif")
    assert vlanpifs == ["bond0.30"]
    vid = node_id("vlanpif", "xen1", "bond0.30")
    assert {n for n in g.neighbors(vid) if g.nodes[n]["kind"] == "pif"} == {
        node_id("pif", "xen1", "eth0"), node_id("pif", "xen1", "eth1")}
