"""Beacon probing (vSphere "Network failure detection: Beacon probing"): which uplink fails,
shotgun mode with two uplinks, and a cut beyond the physical switch - seen by beacons, not by
link status (which keeps sending into the cut, counted)."""
from __future__ import annotations

import pytest

from netsim.clock import ManualClock
from netsim.dataplane import beacon
from netsim.dataplane.policy import FailureDetection, TeamingPolicy
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.errors import TopologyError
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology

from .conftest import BCAST, make, sent

# esx1's three uplinks: vmnic0 and vmnic1 on torA, vmnic2 on torB; both ToRs uplink to core,
# where esx2 (the peer) is. Cutting torB's link to core leaves vmnic2's own link up.
LAB = """name: beacon
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}, vmnic1: {}, vmnic2: {}}
    switches:
      vSwitch0:
        uplinks: UPLINKS
        teaming: {failure_detection: DETECT}
    port_groups:
      App: {switch: vSwitch0, vlan: 10}
    vms:
      app1: {nics: [{network: App, ip: 10.0.10.1/24}]}
      app2: {nics: [{network: App, ip: 10.0.10.2/24}]}
      app3: {nics: [{network: App, ip: 10.0.10.3/24}]}
  esx2:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups:
      App: {switch: vSwitch0, vlan: 10}
    vms:
      peer: {nics: [{network: App, ip: 10.0.10.9/24}]}
physical:
  torA:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10]}
      esx1.vmnic1: {mode: trunk, vlans: [10]}
    links: [core]
  torB:
    ports:
      esx1.vmnic2: {mode: trunk, vlans: [10]}
    links: [core]
  core:
    ports:
      esx2.vmnic0: {mode: trunk, vlans: [10]}
"""
THREE = "[vmnic0, vmnic1, vmnic2]"


def lab(detect: str, uplinks: str = THREE) -> Lab:
    text = LAB.replace("DETECT", detect).replace("UPLINKS", uplinks)
    if uplinks != THREE:  # two uplinks: vmnic1 is not cabled
        text = text.replace("      esx1.vmnic1: {mode: trunk, vlans: [10]}\n", "")
    return Lab(parse_topology(text))


# -- which uplink is to blame: table-driven ------------------------------------------------------
@pytest.mark.parametrize(
    ("members", "edges", "failed", "shotgun"),
    [
        ("abc", {"ab", "bc", "ca"}, "", False),  # all hear all
        ("abc", {"ab"}, "c", False),  # c hears nobody, nobody hears c: c is the bad one
        ("abc", {"ab", "ba"}, "c", False),
        ("abcd", {"ab", "cd"}, "", True),  # two groups of two: cannot tell
        ("abcd", {"ab", "bc"}, "d", False),
        ("ab", set(), "", True),  # two uplinks that lost each other: shotgun
        ("ab", {"ab"}, "", False),  # one way is enough to keep both
        ("abc", set(), "", True),  # nobody hears anybody
        ("a", set(), "", False),  # one uplink: nothing to decide
    ],
)
def test_decide_blames_the_uplinks_outside_the_largest_group(
        members: str, edges: set[str], failed: str, shotgun: bool) -> None:
    got = beacon.decide(members, lambda a, b: a + b in edges)
    assert got == (frozenset(failed), shotgun)


def test_beacon_frame_round_trip_and_malformed_frames_are_refused() -> None:
    mac = beacon.uplink_mac("esx1/vmnic0")
    assert mac[:3] == b"\x00\x50\x56" and not mac[3] & 0x80
    f = beacon.build(mac, "vmnic0", 7)
    assert len(f) == 60 and f[:6] == BCAST and f[6:12] == mac and f[12:14] == b"\x89\x22"
    b = beacon.parse(f)
    assert b is not None and (b.kind, b.seq, b.sender, b.name) == (1, 7, mac, "vmnic0")
    assert len(beacon.build(mac, "vmnic0", 1, kind=beacon.KIND_PROBE, size=1514)) == 1514
    assert beacon.parse(f[:20]) is None  # cut short
    assert beacon.parse(f[:14] + b"\x09" + f[15:]) is None  # unknown kind
    assert beacon.parse(f[:26] + b"\xff" + f[27:]) is None  # name runs past the frame


def test_beacons_go_out_per_uplink_per_vlan_and_are_never_given_to_vms() -> None:
    sw = StandardSwitch("vs", clock=ManualClock(),
                        teaming=TeamingPolicy(failure_detection=FailureDetection.BEACON))
    ups = [sw.add_uplink(Pif(f"vmnic{i}")) for i in range(3)]
    sw.add_port_group(PortGroup("a", vlan=10))
    sw.add_port_group(PortGroup("b", vlan=20))
    vm = sw.attach(Vif(1, 0, mac=bytes.fromhex("00163e000001")), "a")
    probe = beacon.BeaconProbe(sw)
    assert probe.send() == 6
    for u in ups:
        got = sent(u)
        assert sorted(((f[14] << 8) | f[15]) & 0xFFF for f in got) == [10, 20]
        assert all(f[16:18] == b"\x89\x22" and f[:6] == BCAST for f in got)
        ups[0].receive(got[0])  # a beacon arriving on a team member
    assert probe.received == 2 and probe.foreign == 1  # vmnic0's own came back to it
    assert sent(vm) == [] and sw.control_frames == 3
    ups[1].receive(make(BCAST, b"\x02" * 6, vid=10, ethertype=0x8922))  # not a beacon
    assert probe.malformed == 1 and sent(vm) == []


# -- in a lab: the cut beyond the physical switch --------------------------------------------------
async def test_a_cut_beyond_the_physical_switch_fails_over_by_beacons() -> None:
    async with lab("beacon") as lb:
        sw = lb.fabric["esx1/vSwitch0"]
        await lb.run_for(4)
        assert sw.beacon_probe.failed == frozenset() and not sw.shotgun
        cut_at = lb.clock.now_ns()
        lb.fabric["torB/to-core"].link.set_up(False)
        await lb.run_for(6)
        vmnic2 = lb.fabric["esx1/vmnic2"]
        assert vmnic2.link_up  # the NIC's own link never went down
        ((t, name, what),) = sw.beacon_probe.events
        assert (name, what) == ("vmnic2", "failed")
        # three missed one-second beacons, then the next judgement
        assert 3e9 <= t - cut_at <= 4e9
        for vm in ("app1", "app2", "app3"):
            assert (await lb.ping(vm, "peer")).replied, vm
        assert all(sw.uplink_for(p) is not vmnic2 for p in sw.ports.values()
                   if p not in sw.uplinks)
        assert sw.notifications >= 1  # the moved vNIC was announced (RARP) on its new uplink
        # hvsim trace says why a frame from torB's side goes nowhere now
        app1 = lb.fabric["app1"].ports[0].vnic.mac.hex(":")
        tr = lb.trace("esx1/vmnic2", {"eth": {"dst": app1, "src": "02:00:00:00:00:99"},
                                      "vlan": 10})
        assert "vmnic2: failed by beacon probing (link up" in tr.render()
        lb.fabric["torB/to-core"].link.set_up(True)
        await lb.run_for(3)
        assert sw.beacon_probe.events[-1][1:] == ("vmnic2", "restored")


async def test_an_uplink_whose_link_comes_back_is_not_failed_before_it_could_be_heard() -> None:
    async with lab("beacon") as lb:
        sw = lb.fabric["esx1/vSwitch0"]
        await lb.run_for(4)
        lb.set_link("esx1/vmnic1", False)
        await lb.run_for(5)
        lb.set_link("esx1/vmnic1", True)
        await lb.run_for(5)
        assert sw.beacon_probe.events == [] and sw.beacon_probe.failed == frozenset()


async def test_link_status_only_keeps_sending_into_the_cut_and_counts_the_loss() -> None:
    async with lab("link") as lb:
        sw = lb.fabric["esx1/vSwitch0"]
        assert sw.beacon_probe is None
        await lb.run_for(2)
        lb.fabric["torB/to-core"].link.set_up(False)
        await lb.run_for(6)
        vmnic2 = lb.fabric["esx1/vmnic2"]
        stuck = [vm for vm in ("app1", "app2", "app3")
                 if sw.uplink_for(lb.fabric[vm].ports[0]) is vmnic2]
        assert stuck, "port id puts one of three VMs on vmnic2"
        assert not (await lb.ping(stuck[0], "peer")).replied
        drops = lb.fabric["torB/to-core"].counters.drops
        assert drops.get("link-down", 0) > 0


async def test_two_uplinks_that_lose_each_other_shotgun() -> None:
    async with lab("beacon", "[vmnic0, vmnic2]") as lb:
        sw = lb.fabric["esx1/vSwitch0"]
        await lb.run_for(4)
        assert not sw.shotgun
        lb.fabric["torB/to-core"].link.set_up(False)
        await lb.run_for(6)
        assert sw.shotgun and sw.beacon_probe.failed == frozenset()
        assert sw.beacon_probe.events[-1][1:] == ("*", "shotgun")
        # every VM still reaches the peer: its frames leave by both uplinks
        for vm in ("app1", "app2", "app3"):
            assert (await lb.ping(vm, "peer")).replied, vm
        lb.fabric["torB/to-core"].link.set_up(True)
        await lb.run_for(3)
        assert not sw.shotgun


XEN = """name: x
hosts:
  xen1:
    type: xen
    pifs: {eth0: {}, eth1: {}}
    switches: {xenbr0: {uplinks: [eth0, eth1], teaming: TEAMING}}
"""


def test_beacon_probing_and_lbt_are_vsphere_only_and_checked() -> None:
    with pytest.raises(TopologyError, match="failure_detection must be one of link, beacon"):
        parse_topology(LAB.replace("DETECT", "arp").replace("UPLINKS", THREE))
    parse_topology(XEN.replace("TEAMING", "{policy: failover, failure_detection: link}"))
    with pytest.raises(TopologyError, match="beacon probing is a vSphere failure detection"):
        parse_topology(XEN.replace("TEAMING", "{failure_detection: beacon}"))
    with pytest.raises(TopologyError, match="load-based is a vSphere teaming policy"):
        parse_topology(XEN.replace("TEAMING", "{policy: load-based}"))
