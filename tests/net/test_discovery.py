"""CDP/LLDP agents: what each operation sends and learns, hold times, expiry, bad frames,
and the topology keys (ESXi, XenServer, physical switch)."""
from __future__ import annotations

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.discovery import (
    MAX_NEIGHBOURS,
    DiscoveryConfig,
    Identity,
    LinkDiscovery,
)
from netsim.dataplane.port import Pif, Port
from netsim.dataplane.switch import PhysicalSwitch, StandardSwitch
from netsim.errors import ConfigError, TopologyError
from netsim.lab.discovery import neighbour_table, nic_mac
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology
from netsim.wire.discovery import cdp_frame, lldp_frame, parse_neighbour

MAC = bytes.fromhex("02000000aa01")
SWITCH_MAC = bytes.fromhex("02000000bb07")


def agent(config: DiscoveryConfig, clock: ManualClock) -> tuple[LinkDiscovery, list[bytes]]:
    pif = Pif("vmnic0")
    sw = StandardSwitch("vSwitch0", clock=clock)
    sw.add_uplink(pif)
    a = LinkDiscovery(pif, Identity("esx1", "vmnic0", MAC), config, clock,
                      mtu_of=lambda: sw.port_mtu(pif))
    sw.set_discovery(pif, a.receive)
    return a, pif.queue.items  # what it sent onto the wire


@pytest.mark.parametrize(
    ("protocol", "operation", "sends", "learns"),
    [
        ("cdp", "none", False, False),
        ("cdp", "down", False, False),  # the vSS name of none
        ("cdp", "listen", False, True),  # the ESXi default
        ("cdp", "advertise", True, False),
        ("cdp", "both", True, True),
        ("lldp", "listen", False, True),
        ("lldp", "advertise", True, False),
        ("lldp", "both", True, True),
    ],
)
def test_each_operation_sends_and_learns_what_vsphere_says(
        protocol: str, operation: str, sends: bool, learns: bool) -> None:
    clock = ManualClock()
    a, wire = agent(DiscoveryConfig((protocol,), operation), clock)
    if a.config.advertises:
        a.send_now()
    sent = [parse_neighbour(f) for f in wire]
    assert bool(sent) == sends
    if sends:
        n = sent[0]
        assert n is not None and (n.protocol, n.system, n.port, n.ttl) == (
            protocol, "esx1", "vmnic0", 180 if protocol == "cdp" else 120)
        assert n.platform == "VMware ESX" and n.mtu == 1500
    build = cdp_frame if protocol == "cdp" else lldp_frame
    a.port.receive(build(SWITCH_MAC, system="core", port="Gi1/0/7", vlan=10, mtu=9000))
    assert bool(a.current()) == learns
    assert a.stats.rx + a.stats.ignored == 1
    # never switched: nothing else of the switch saw it (it has no other port here) and it is
    # not a drop either
    assert a.port.counters.drops == {}


def test_the_other_protocol_is_consumed_but_not_learned() -> None:
    a, _ = agent(DiscoveryConfig(("cdp",), "both"), ManualClock())
    a.port.receive(lldp_frame(SWITCH_MAC, system="core", port="Gi1/0/7"))
    assert a.current() == [] and a.stats.ignored == 1


def test_neighbour_expires_after_its_hold_time_and_is_refreshed_before() -> None:
    clock = ManualClock()
    a, _ = agent(DiscoveryConfig(("cdp",), "listen"), clock)
    f = cdp_frame(SWITCH_MAC, system="core", port="Gi1/0/7")  # holdtime 180
    a.port.receive(f)
    clock.advance(179)
    assert [lr.neighbour.system for lr in a.current()] == ["core"]
    a.port.receive(f)  # refreshed at 179 s: kept until 359 s
    clock.advance(179)
    assert a.current() and a.stats.expired == 0
    clock.advance(1)
    assert a.current() == [] and a.stats.expired == 1


def test_a_flood_of_forged_neighbours_is_bounded_and_counted() -> None:
    clock = ManualClock()
    a, _ = agent(DiscoveryConfig(("lldp",), "listen"), clock)
    for i in range(MAX_NEIGHBOURS + 100):
        a.port.receive(lldp_frame(i.to_bytes(6, "big"), system=f"fake{i}", port="x", ttl=10))
    assert len(a.current()) == MAX_NEIGHBOURS and a.stats.too_many == 100
    clock.advance(10)  # all expired: room again
    a.port.receive(lldp_frame(SWITCH_MAC, system="core", port="Gi1/0/7"))
    assert [lr.neighbour.system for lr in a.current()] == ["core"]


def test_lldp_ttl_zero_removes_the_neighbour_at_once() -> None:
    a, _ = agent(DiscoveryConfig(("lldp",), "listen"), ManualClock())
    a.port.receive(lldp_frame(SWITCH_MAC, system="core", port="Gi1/0/7"))
    assert a.current()
    a.port.receive(lldp_frame(SWITCH_MAC, system="core", port="Gi1/0/7", ttl=0))
    assert a.current() == []


def test_a_malformed_discovery_frame_is_counted_and_not_switched() -> None:
    clock = ManualClock()
    sw = PhysicalSwitch("core", clock=clock)
    p1, p2 = sw.add_port(Port("p1")), sw.add_port(Port("p2"))
    a = LinkDiscovery(p1, Identity("core", "Gi1/0/1", SWITCH_MAC), DiscoveryConfig(
        ("cdp", "lldp"), "both"), clock)
    sw.set_discovery(p1, a.receive)
    cut = lldp_frame(MAC, system="esx1", port="vmnic0")[:20]
    p1.receive(cut)
    p1.receive(cdp_frame(MAC, system="esx1", port="vmnic0"))
    assert p1.counters.drops == {"malformed": 1} and a.stats.malformed == 1
    assert not p2.queue.items  # neither was flooded to p2
    assert [lr.neighbour.system for lr in a.current()] == ["esx1"]
    # a port without an agent is a plain bridge port: other multicast still floods
    p2.receive(bytes.fromhex("01005e000001") + MAC + b"\x08\x00" + bytes(46))
    assert len(p1.queue.items) == 1


def test_reconfiguring_forgets_neighbours_it_no_longer_listens_to() -> None:
    a, _ = agent(DiscoveryConfig(("cdp",), "listen"), ManualClock())
    a.port.receive(cdp_frame(SWITCH_MAC, system="core", port="Gi1/0/7"))
    a.configure(DiscoveryConfig(("cdp",), "advertise"))
    assert a.current() == []
    with pytest.raises(ConfigError, match="operation 'loud'"):
        DiscoveryConfig(("cdp",), "loud")
    with pytest.raises(ConfigError, match="protocol 'edp'"):
        DiscoveryConfig(("edp",), "both")


LAB = """name: disc
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches:
      vSwitch0: {uplinks: [vmnic0], mtu: 9000ESXDISC}
  xen1:
    type: xen
    pifs: {eth0: {mtu: 9000}}
    switches:
      xenbr0: {uplinks: [eth0]XENDISC}
physical:
  core:
    discovery: {protocols: [cdp, lldp], mgmt: 192.0.2.2, platform: cisco WS-C3850}
    ports:
      esx1.vmnic0: {mode: access, vlan: 20, ifname: Gi1/0/7}
      xen1.eth0: {mode: trunk, ifname: Gi1/0/9, mtu: 9000}
"""


def lab(esx: str = "", xen: str = "") -> Lab:
    return Lab(parse_topology(LAB.replace("ESXDISC", esx).replace("XENDISC", xen), "t.yaml"))


async def test_lab_defaults_esxi_listens_xen_is_silent_switch_advertises() -> None:
    async with lab() as running:
        await running.run_for(1)
        rows = {(r.device, r.port): r for r in neighbour_table(running.fabric)}
    esx = rows["esx1", "vmnic0"]
    assert (esx.config, esx.protocol, esx.system, esx.remote_port, esx.vlan, esx.mtu,
            esx.mgmt, esx.platform) == ("cdp listen", "cdp", "core", "Gi1/0/7", 20, 1500,
                                        "192.0.2.2", "cisco WS-C3850")
    # XenServer: no LLDP unless configured (its Open vSwitch still keeps them off the bridge)
    assert (rows["xen1", "eth0"].config, rows["xen1", "eth0"].system) == ("lldp none", "")
    assert rows["core", "Gi1/0/7"].system == "" and rows["core", "Gi1/0/9"].system == ""


async def test_lab_hosts_that_advertise_are_listed_by_the_switch() -> None:
    async with lab(esx=", discovery: {protocol: cdp, operation: both}",
                   xen=", discovery: {protocol: lldp}") as running:
        await running.run_for(1)
        rows = {(r.device, r.port): r for r in neighbour_table(running.fabric)}
    assert (rows["core", "Gi1/0/7"].system, rows["core", "Gi1/0/7"].remote_port,
            rows["core", "Gi1/0/7"].platform) == ("esx1", "vmnic0", "VMware ESX")
    xen = rows["core", "Gi1/0/9"]
    # Open vSwitch sends no System Name: the switch shows its chassis ID (the PIF's MAC)
    mac = ":".join(f"{b:02x}" for b in nic_mac("xen1", "eth0"))
    assert (xen.protocol, xen.system, xen.remote_port, xen.mtu, xen.platform) == (
        "lldp", mac, "eth0", 9000, "openvswitch")
    assert (rows["xen1", "eth0"].system, rows["xen1", "eth0"].mtu) == ("core", 9000)


@pytest.mark.parametrize(
    ("esx", "xen", "error"),
    [
        ("", ", discovery: {protocol: cdp}", r"t\.yaml:12: hosts\.xen1\.switches\.xenbr0\."
         r"discovery: XenServer's Open vSwitch speaks LLDP only"),
        ("", ", discovery: {protocol: lldp, operation: listen}", "LLDP only, sending and "
         "receiving together"),
        (", discovery: {operation: loud}", "", r"t\.yaml:7: .*vSwitch0\.discovery\.operation: "
         r"discovery operation must be none \(down\), listen, advertise or both"),
        (", discovery: {protocol: edp}", "", "discovery protocol must be cdp or lldp"),
    ],
)
def test_bad_discovery_settings_name_file_line_and_key(esx: str, xen: str, error: str) -> None:
    with pytest.raises(TopologyError, match=error):
        lab(esx, xen)


def test_draw_shows_the_discovery_settings_given_in_the_file() -> None:
    from netsim.lab.draw import to_dot

    dot = to_dot(parse_topology(LAB.replace("ESXDISC", ", discovery: {operation: both}")
                                .replace("XENDISC", ""), "t.yaml"))
    assert "vSwitch0\\nMTU 9000\\nCDP both" in dot
    assert "core\\nCDP+LLDP both" in dot
    assert "xenbr0\\n" not in dot  # XenServer default: nothing to show


def test_hvsim_run_neighbors_prints_each_uplinks_neighbour(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from netsim.cli.app import app
    from netsim.cli.commands import topology as cmd

    monkeypatch.setattr(cmd.console, "width", 200)  # one row per line whatever the terminal

    topo = tmp_path / "t.yaml"
    topo.write_text(LAB.replace("ESXDISC", ", discovery: {protocol: cdp, operation: both}")
                    .replace("XENDISC", ""))
    res = CliRunner().invoke(app, ["run", str(topo), "--out", str(tmp_path / "o"),
                                   "--traffic", "none", "--duration", "61", "--neighbors"])
    assert res.exit_code == 0, res.output
    lines = [" ".join(line.replace("│", " ").split()) for line in res.output.splitlines()]
    assert "esx1 vmnic0 cdp both cdp core Gi1/0/7 20 1500 192.0.2.2 cisco WS-C3850 179s" in lines
    assert "core Gi1/0/7 cdp+lldp both cdp esx1 vmnic0 1500 VMware ESX 179s" in lines
    assert "xen1 eth0 lldp none - - -" in lines  # XenServer by default: hears nothing
    bad = CliRunner().invoke(app, ["run", str(topo), "--out", str(tmp_path / "o"),
                                   "--neighbors", "--live"])
    assert bad.exit_code == 2 and "--neighbors" in bad.output


async def test_trace_says_the_switch_port_agent_takes_a_discovery_frame() -> None:
    async with lab() as running:
        t = running.trace("esx1/vmnic0", cdp_frame(MAC, system="esx1", port="vmnic0"))
        # from the wire into the vSwitch uplink: its CDP agent takes it, nothing is flooded
        assert t.verdict == "taken by the CDP/LLDP agent of vmnic0" and not t.delivered
        assert "link discovery agent takes it" in t.render()
        assert t.as_dict()["consumed"] == ["vmnic0"]
