"""Beacon probing on the wire, as tshark reads our capture: tshark 4.0 has no dissector for
VMware's beacon ethertype 0x8922, so we check what it does show - broadcast destination, the
uplink's own MAC as source, ethertype 0x8922 inside the VLAN tag - and that an uplink sends one
beacon per VLAN in use each second."""
from __future__ import annotations

import collections
import shutil
import subprocess
from pathlib import Path

import pytest

from netsim.dataplane.beacon import uplink_mac
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology
from netsim.wire.frame import mac_to_str

pytestmark = pytest.mark.interop

LAB = """name: beacons
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}, vmnic1: {}, vmnic2: {}}
    switches:
      vSwitch0:
        uplinks: [vmnic0, vmnic1, vmnic2]
        teaming: {failure_detection: beacon}
    port_groups:
      App: {switch: vSwitch0, vlan: 10}
      DB: {switch: vSwitch0, vlan: 20}
    vms:
      app1: {nics: [{network: App, ip: 10.0.10.1/24}]}
physical:
  tor:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10, 20]}
      esx1.vmnic1: {mode: trunk, vlans: [10, 20]}
      esx1.vmnic2: {mode: trunk, vlans: [10, 20]}
"""


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_one_beacon_per_uplink_per_vlan_per_second_as_tshark_shows_it(
        tmp_path: Path) -> None:
    async with Lab(parse_topology(LAB)) as lab:
        (pcap,) = lab.capture(["esx1/vmnic0"], tmp_path)
        await lab.run_for(5.5)
    rows = [r.split("\t") for r in tshark(
        "-r", str(pcap), "-T", "fields", "-e", "frame.time_epoch", "-e", "eth.dst",
        "-e", "eth.src", "-e", "vlan.id", "-e", "vlan.etype", "-e", "frame.len").splitlines()]
    mine = mac_to_str(uplink_mac("esx1/vmnic0"))
    others = {mac_to_str(uplink_mac(f"esx1/vmnic{i}")) for i in (1, 2)}
    sent = [r for r in rows if r[2] == mine]
    got = [r for r in rows if r[2] in others]
    assert {(r[1], r[4], r[5]) for r in rows} == {("ff:ff:ff:ff:ff:ff", "0x8922", "64")}
    per_second = collections.Counter(int(float(r[0])) for r in sent)
    assert len(per_second) == 6 and set(per_second.values()) == {2}  # t = 0..5 s, 2 VLANs
    assert sorted({r[3] for r in sent}) == ["10", "20"]
    assert len(got) == 2 * len(sent)  # and it hears both team mates on both VLANs


HC = """name: hc
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {mtu: 9000}}
    switches: {vSwitch0: {uplinks: [vmnic0], mtu: 9000}}
    port_groups: {App: {vlan: 10}, DB: {vlan: 20}}
  esx2:
    type: esxi
    pifs: {vmnic0: {mtu: 9000}}
    switches: {vSwitch0: {uplinks: [vmnic0], mtu: 9000}}
    port_groups: {App: {vlan: 10}, DB: {vlan: 20}}
physical:
  tor:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10, 20], mtu: 9000}
      esx2.vmnic0: {mode: trunk, vlans: [10, 20], mtu: 9000}
"""


async def test_health_check_probes_as_tshark_shows_them(tmp_path: Path) -> None:
    from netsim.lab.healthcheck import esxi_switches, health_check

    t = parse_topology(HC)
    async with Lab(t) as lab:
        (pcap,) = lab.capture(["esx1/vmnic0"], tmp_path)
        report = await health_check(esxi_switches(t, lab.fabric), lambda: lab.run_for(1.0))
    assert report.ok
    rows = [r.split("\t") for r in tshark(
        "-r", str(pcap), "-Y", "vlan.etype == 0x8922", "-T", "fields", "-e", "eth.src",
        "-e", "eth.dst", "-e", "vlan.id", "-e", "frame.len").splitlines()]
    mine = mac_to_str(uplink_mac("esx1/vmnic0"))
    peer = mac_to_str(uplink_mac("esx2/vmnic0"))
    # per VLAN: a 60-byte probe (64 tagged) and one padded to the MTU (9000 + 14 + 4 tag),
    # from each side, all broadcast
    want = sorted((src, "ff:ff:ff:ff:ff:ff", vid, size) for src in (mine, peer)
                  for vid in ("10", "20") for size in ("64", "9018"))
    assert sorted(tuple(r) for r in rows) == want
