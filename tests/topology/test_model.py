"""Topology files and the builder: the model, the graph, and errors that name file, line, key."""
from __future__ import annotations

import textwrap

import networkx as nx
import pytest

from netsim.errors import TopologyError
from netsim.lab.topology import (
    TopologyBuilder,
    allocate_mac,
    load_topology,
    node_id,
    parse_topology,
    to_graph,
)
from tests.topology.conftest import EXAMPLES, TOPOLOGIES


def test_the_seed_examples_ship() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"xen-vlans", "esxi-vss", "xen-router", "three-hosts"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_loads_into_a_connected_typed_graph(path) -> None:
    topo = load_topology(path)
    g = to_graph(topo)
    kinds = {d["kind"] for _, d in g.nodes(data=True)}
    assert {"host", "switch", "portgroup", "vm", "vnic"} <= kinds
    # every vNIC is attached to a port group of its own host
    for vif in topo.vifs:
        vm = topo.vm(vif.vm)
        nid = node_id("vnic", vm.host, vif.port)
        pgs = [n for n in g.neighbors(nid) if g.nodes[n]["kind"] == "portgroup"]
        assert pgs == [node_id("pg", vm.host, vif.network)]
    macs = [v.mac for v in topo.vifs]
    assert len(set(macs)) == len(macs)


def test_xen_vlan_example_is_the_seeds() -> None:
    topo = load_topology(TOPOLOGIES / "xen-vlans.yaml")
    host = topo.host("xen1")
    assert sorted(n.vlan for n in host.networks) == [0, 5, 65, 400]
    assert len(host.vms) == 8
    g = to_graph(topo)
    vlan_pifs = sorted(d["name"] for _, d in g.nodes(data=True) if d["kind"] == "vlanpif")
    assert vlan_pifs == ["eth0.400", "eth0.5", "eth0.65"]
    # each VLAN PIF hangs off the trunk eth0, which is cabled to the physical trunk port
    for name in vlan_pifs:
        assert g.has_edge(node_id("vlanpif", "xen1", name), node_id("pif", "xen1", "eth0"))
    port = topo.physical[0].ports[0]
    assert (port.name, port.mode, port.vlans) == ("xen1.eth0", "trunk", (5, 65, 400))
    assert topo.vm("vm1").vifs[0].port == "vif1.0"


def test_esxi_example_teams_active_standby_and_shapes_backup() -> None:
    topo = load_topology(TOPOLOGIES / "esxi-vss.yaml")
    sw = topo.host("esx1").switch("vSwitch0")
    assert sw.teaming is not None
    assert (sw.teaming.policy, sw.teaming.active, sw.teaming.standby) == (
        "port-id", ("vmnic0",), ("vmnic1",))
    shaping = topo.host("esx1").network("Backup").shaping
    assert shaping is not None
    assert (shaping.average_bps, shaping.peak_bps, shaping.burst_bytes) == (
        10_000_000, 20_000_000, 65536)
    assert topo.vm("web1").vifs[0].port == "web1.eth0"


def test_internal_networks_get_their_own_bridges() -> None:
    topo = load_topology(TOPOLOGIES / "xen-router.yaml")
    host = topo.host("xen1")
    assert {n.switch for n in host.networks} == {"xapi0", "xapi1"}
    assert all(s.internal for s in host.switches)
    gw = topo.vm("gw")
    assert gw.router and len(gw.vifs) == 2


def test_builder_makes_the_same_model_as_the_file() -> None:
    file_topo = load_topology(TOPOLOGIES / "xen-router.yaml")
    t = TopologyBuilder("xen-router", seed=3)
    t.add_host("xen1", type="xen")
    t.add_network("xen1", "netA", internal=True).add_network("xen1", "netB", internal=True)
    t.add_vm("xen1", "gw", router=True, nics=[{"network": "netA", "ip": "172.16.1.1/24"},
                                               {"network": "netB", "ip": "172.16.2.1/24"}])
    t.add_vm("xen1", "a1", gateway="172.16.1.1", nics=[{"network": "netA",
                                                        "ip": "172.16.1.10/24"}])
    t.add_vm("xen1", "a2", gateway="172.16.1.1", nics=[{"network": "netA",
                                                        "ip": "172.16.1.11/24"}])
    t.add_vm("xen1", "b1", gateway="172.16.2.1", nics=[{"network": "netB",
                                                        "ip": "172.16.2.10/24"}])
    t.add_vm("xen1", "b2", nics=[{"network": "netB", "ip": "172.16.2.11/24"}])
    built = t.build()
    assert built.hosts == file_topo.hosts
    assert nx.utils.graphs_equal(to_graph(built), to_graph(file_topo))


def test_builder_connect_cables_and_validates_like_a_file() -> None:
    t = TopologyBuilder("b")
    t.add_host("xen1", pifs=["eth0"]).add_switch("xen1", "xenbr0", uplinks=["eth0"])
    t.add_port_group("xen1", "vlan5", switch="xenbr0", vlan=5)
    t.add_vm("xen1", "vm1", nics=[{"network": "vlan5"}])
    t.connect("xen1.eth0", "phys", mode="trunk", vlans=[5])
    topo = t.build()
    assert topo.physical[0].ports[0].vlans == (5,)
    t.add_vm("xen1", "vm2", nics=[{"network": "vlan6"}])
    with pytest.raises(TopologyError, match=r"^<builder>: hosts\.xen1\.vms\.vm2\.vifs\[0\]"
                       r"\.network: no network 'vlan6' on host xen1$"):
        t.build()


def test_macs_are_xen_oui_deterministic_and_stable() -> None:
    text = textwrap.dedent("""\
        seed: 7
        hosts:
          xen1:
            networks: {priv: {internal: true}}
            vms:
              a: {vifs: [{network: priv}, {network: priv}]}
              b: {vifs: [{network: priv}]}
        """)
    one = parse_topology(text)
    two = parse_topology(text)
    macs = [v.mac for v in one.vifs]
    assert macs == [v.mac for v in two.vifs]
    for mac in macs:
        b = bytes.fromhex(mac.replace(":", ""))
        assert b[:3] == b"\x00\x16\x3e" and b[3] < 0x80
    # adding a VM does not renumber the others; another seed gives other MACs
    more = parse_topology(text + "      c: {vifs: [{network: priv}]}\n")
    assert [v.mac for v in more.vifs][:3] == macs
    other = parse_topology(text.replace("seed: 7", "seed: 8"))
    assert [v.mac for v in other.vifs] != macs
    assert allocate_mac(7, "a", 0) == macs[0]


def test_an_allocated_mac_never_collides_with_a_given_one() -> None:
    taken = allocate_mac(0, "a", 0)
    topo = parse_topology(textwrap.dedent(f"""\
        hosts:
          xen1:
            networks: {{priv: {{internal: true}}}}
            vms:
              a: {{vifs: [{{network: priv}}]}}
              b: {{vifs: [{{network: priv, mac: "{taken}"}}]}}
        """))
    assert topo.vm("b").vifs[0].mac == taken
    assert topo.vm("a").vifs[0].mac != taken


BAD = {
    "missing network (top-level vms)": (
        """\
        hosts:
          xen1:
            pifs: {eth0: {}}
            switches: {xenbr0: {uplinks: [eth0]}}
            networks:
              vlan5: {switch: xenbr0, vlan: 5}
        vms:
          vm1:
            host: xen1
            vifs:
              - {network: vlan5}
              - {network: vlan6}
        """,
        "topology.yaml:12: vms.vm1.vifs[1].network: no network 'vlan6' on host xen1"),
    "missing network (under host)": (
        """\
        hosts:
          xen1:
            networks: {lan: {internal: true}}
            vms:
              vm1:
                vifs: [{network: vlan6}]
        """,
        "topology.yaml:6: hosts.xen1.vms.vm1.vifs[0].network: no network 'vlan6' on host xen1"),
    "unknown key": (
        """\
        hosts:
          xen1:
            networks:
              lan: {internal: true, vlna: 5}
        """,
        "topology.yaml:4: hosts.xen1.networks.lan.vlna: unknown key 'vlna' (expected one of: "
        "switch, vlan, internal, security, shaping, teaming, mtu, blocked"),  # more follow
    "unknown top-level key": (
        "hosts: {xen1: {}}\nswitches: {}\n",
        "topology.yaml:2: switches: unknown key 'switches'"),
    "VLAN 4096": (
        """\
        hosts:
          xen1:
            pifs: {eth0: {}}
            switches: {xenbr0: {uplinks: [eth0]}}
            networks:
              big: {switch: xenbr0, vlan: 4096}
        """,
        "topology.yaml:6: hosts.xen1.networks.big.vlan: VLAN ID 4096 out of range 0-4095"),
    "VLAN 4096 on a trunk": (
        """\
        hosts:
          xen1: {pifs: {eth0: {}}}
        physical:
          sw: {ports: {xen1.eth0: {mode: trunk, vlans: [5, 4096]}}}
        """,
        "topology.yaml:4: physical.sw.ports.xen1.eth0.vlans[1]: VLAN ID 4096 out of range "
        "1-4094"),
    "duplicate MAC": (
        """\
        hosts:
          xen1:
            networks: {lan: {internal: true}}
            vms:
              vm1: {vifs: [{network: lan, mac: "00:16:3e:00:00:01"}]}
              vm2: {vifs: [{network: lan, mac: "00:16:3E:00:00:01"}]}
        """,
        "topology.yaml:6: hosts.xen1.vms.vm2.vifs[0].mac: duplicate MAC 00:16:3e:00:00:01: "
        "already used by topology.yaml:5: hosts.xen1.vms.vm1.vifs[0].mac"),
    "loop through an unteamed bridge": (
        """\
        hosts:
          xen1:
            pifs: {eth0: {}, eth1: {}}
            switches: {xenbr0: {uplinks: [eth0, eth1]}}
        physical:
          sw:
            ports:
              xen1.eth0: {}
              xen1.eth1: {}
        """,
        "topology.yaml:9: physical.sw.ports.xen1.eth1: loop in the physical network without "
        "teaming"),
    "loop between physical switches": (
        """\
        hosts: {xen1: {}}
        physical:
          a: {links: [b, c]}
          b: {links: [c]}
          c: {}
        """,
        "topology.yaml:4: physical.b.links[0]: loop in the physical network without teaming"),
    "peak below average": (
        """\
        hosts:
          esx1:
            type: esxi
            switches: {vSwitch0: {}}
            port_groups:
              pg: {shaping: {average: 10M, peak: 5M}}
        """,
        "topology.yaml:6: hosts.esx1.port_groups.pg.shaping.peak: peak 5000000 bit/s is below "
        "average 10000000 bit/s"),
    "port group teaming naming a PIF that is not an uplink": (
        """\
        hosts:
          esx1:
            type: esxi
            pifs: {vmnic0: {}, vmnic1: {}, vmnic2: {}}
            switches: {vSwitch0: {uplinks: [vmnic0, vmnic1]}}
            port_groups:
              App: {teaming: {active: [vmnic2]}}
        """,
        "topology.yaml:7: hosts.esx1.port_groups.App.teaming.active[0]: vmnic2 is not an "
        "uplink of this switch (uplinks: vmnic0, vmnic1)"),
    "network teaming on xen": (
        """\
        hosts:
          xen1:
            pifs: {eth0: {}}
            switches: {xenbr0: {uplinks: [eth0]}}
            networks:
              lan: {teaming: {active: [eth0]}}
        """,
        "topology.yaml:6: hosts.xen1.networks.lan.teaming: teaming per network is an ESXi "
        "port group override"),
    "uplink that is not a PIF": (
        """\
        hosts:
          xen1:
            pifs: {eth0: {}}
            switches: {xenbr0: {uplinks: [eth1]}}
        """,
        "topology.yaml:4: hosts.xen1.switches.xenbr0.uplinks[0]: no PIF 'eth1' on host xen1"),
    "cable to a missing PIF": (
        "hosts: {xen1: {}}\nphysical: {sw: {ports: {xen1.eth9: {}}}}\n",
        "topology.yaml:2: physical.sw.ports.xen1.eth9: no PIF 'eth9' on host xen1"),
    "router with one vNIC": (
        """\
        hosts:
          xen1:
            networks: {lan: {internal: true}}
            vms: {r: {router: true, vifs: [{network: lan}]}}
        """,
        "topology.yaml:4: hosts.xen1.vms.r.router: a router VM needs at least two vNICs"),
    "address without prefix": (
        """\
        hosts:
          xen1:
            networks: {lan: {internal: true}}
            vms: {a: {vifs: [{network: lan, ip: 10.0.0.1}]}}
        """,
        "topology.yaml:4: hosts.xen1.vms.a.vifs[0].ip: give the prefix length too"),
    "same VM twice": (
        """\
        hosts:
          xen1:
            networks: {lan: {internal: true}}
            vms: {a: {vifs: [{network: lan}]}}
        vms:
          a: {host: xen1}
        """,
        "topology.yaml:6: vms.a: VM 'a' is already defined at topology.yaml:4: hosts.xen1.vms.a"),
    "two Xen networks on one VLAN PIF": (
        """\
        hosts:
          xen1:
            pifs: {eth0: {}}
            switches: {xenbr0: {uplinks: [eth0]}}
            networks:
              a: {switch: xenbr0, vlan: 5}
              b: {switch: xenbr0, vlan: 5}
        """,
        "topology.yaml:7: hosts.xen1.networks.b.vlan: VLAN 5 on xenbr0 is already network a"),
    "not YAML": ("hosts: {xen1: [}\n", "topology.yaml:1: not valid YAML"),
    "python tag": ("hosts: !!python/object:os.system {}\n", "topology.yaml:1"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_files_give_one_clear_error(case: str) -> None:
    text, expected = BAD[case]
    with pytest.raises(TopologyError) as info:
        parse_topology(textwrap.dedent(text), "topology.yaml")
    assert str(info.value).startswith(expected), str(info.value)


def test_teamed_uplinks_to_one_switch_are_not_a_loop() -> None:
    topo = parse_topology(textwrap.dedent("""\
        hosts:
          xen1:
            pifs: {eth0: {}, eth1: {}}
            switches:
              xenbr0:
                uplinks: [eth0, eth1]
                teaming: {active: [eth0], standby: [eth1]}
        physical:
          sw: {ports: {xen1.eth0: {}, xen1.eth1: {}}}
        """))
    assert topo.host("xen1").switch("xenbr0").teaming.standby == ("eth1",)


def test_unreadable_file_is_a_topology_error(tmp_path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "nope.yaml")


def test_readme_topology_examples_work() -> None:
    import re

    readme = (TOPOLOGIES.parent / "README.md").read_text()
    section = readme[readme.index("## Topologies"):]
    (yaml_block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)[:1]
    topo = parse_topology(yaml_block, "readme.yaml")
    assert topo.mirrors[0].destination == "vif2.0"
    builder_block, lab_block = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    scope: dict = {}
    exec(builder_block, scope)
    assert scope["graph"].number_of_nodes() > 0
    exec(lab_block, {"__name__": "readme"})  # runs a lab: ping, failover, pingall
