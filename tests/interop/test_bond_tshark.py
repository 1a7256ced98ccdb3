"""XenServer (Open vSwitch) bond behaviour in a running lab, read back by tshark: an LACP
bond with `lacp_fallback_ab` cabled to a switch that does not speak LACP runs active-backup
and carries traffic (without it the bond stays down); when its active member fails, the other
member sends one RARP learning packet per VM MAC, which Wireshark dissects as RARP requests
(opcode 3) from that MAC - tagged with the VLAN of a network on `bond0.30`."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology

pytestmark = pytest.mark.interop

LAB = """\
name: fallback
hosts:
  xen1:
    type: xen
    pifs: {eth0: {}, eth1: {}}
    switches:
      xenbr0:
        uplinks: [eth0, eth1]
        bond: {mode: lacp, lacp_time: fast%s}
    networks:
      lan: {switch: xenbr0}
      net30: {switch: xenbr0, vlan: 30}
    vms:
      app1: {vifs: [{network: lan, ip: 10.0.0.11/24, mac: "00:16:3e:00:00:11"}]}
      app2: {vifs: [{network: net30, ip: 10.30.0.12/24, mac: "00:16:3e:00:00:12"}]}
  xen2:
    type: xen
    pifs: {eth0: {}}
    switches:
      xenbr0: {uplinks: [eth0]}
    networks:
      lan: {switch: xenbr0}
      net30: {switch: xenbr0, vlan: 30}
    vms:
      db1: {vifs: [{network: lan, ip: 10.0.0.21/24}]}
      db2: {vifs: [{network: net30, ip: 10.30.0.22/24}]}
physical:
  core:
    ports:
      xen1.eth0: {mode: native-untagged, native: 1, vlans: [1, 30]}
      xen1.eth1: {mode: native-untagged, native: 1, vlans: [1, 30]}
      xen2.eth0: {mode: native-untagged, native: 1, vlans: [1, 30]}
"""


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("fallback", [False, True])
async def test_a_lacp_bond_on_a_switch_without_lacp(fallback: bool, tmp_path: Path) -> None:
    topo = parse_topology(LAB % (", lacp_fallback_ab: true" if fallback else ""), "t.yaml")
    lab = Lab(topo)
    (pcap,) = lab.capture(["xen1/eth1"], tmp_path)
    async with lab:
        await lab.run_for(5)
        bond = lab.fabric.lags["xen1/bond0"]
        assert bond.status()["fallback_ab"] is fallback
        r = await lab.pingall(wait_s=1.0)
        if not fallback:  # LACP configured, never negotiated: OVS keeps the bond down
            assert r.answered == 0 and not bond.port.link_up
            return
        assert r.answered == 4, r.matrix  # within each subnet, both ways
        lab.set_link("xen1/eth0", False)
        await lab.run_for(1)
        assert [p.name for p in bond.distributing] == ["eth1"]
        r = await lab.pingall(wait_s=1.0)
        assert r.answered == 4, r.matrix  # within each subnet, both ways
    out = tshark("-r", str(pcap), "-Y", "arp.opcode == 3", "-T", "fields",
                 "-e", "eth.dst", "-e", "eth.src", "-e", "vlan.id", "-e", "arp.src.hw_mac",
                 "-e", "arp.dst.hw_mac", "-e", "arp.src.proto_ipv4", "-e", "_ws.col.Protocol")
    rows = sorted(tuple(line.split("\t")) for line in out.strip().splitlines())
    assert rows == [
        ("ff:ff:ff:ff:ff:ff", "00:16:3e:00:00:11", "", "00:16:3e:00:00:11",
         "00:16:3e:00:00:11", "0.0.0.0", "RARP"),
        ("ff:ff:ff:ff:ff:ff", "00:16:3e:00:00:12", "30", "00:16:3e:00:00:12",
         "00:16:3e:00:00:12", "0.0.0.0", "RARP"),
    ], out
