"""Teaming from a topology file: ip-hash / failover / failback options parsed and drawn, and the
notify-switches RARP of a failover, captured on the new uplink, as tshark dissects it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from netsim.dataplane.policy import LoadBalancing
from netsim.errors import TopologyError
from netsim.lab.draw import to_dot
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology

pytestmark = pytest.mark.interop

LAB = """name: team
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}, vmnic1: {}}
    switches:
      vSwitch0:
        uplinks: [vmnic0, vmnic1]
        teaming: TEAMING
    port_groups:
      App: {switch: vSwitch0, vlan: 10}
    vms:
      app1: {nics: [{network: App, ip: 10.0.10.1/24, mac: "00:50:56:00:00:01"}]}
      app2: {nics: [{network: App, ip: 10.0.10.2/24, mac: "00:50:56:00:00:02"}]}
physical:
  tor:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10]}
      esx1.vmnic1: {mode: trunk, vlans: [10]}
"""


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_teaming_options_from_yaml_are_built_and_drawn() -> None:
    topo = parse_topology(LAB.replace("TEAMING", "{policy: ip-hash, failback: false}"))
    lab = Lab(topo)
    sw = lab.fabric["esx1/vSwitch0"]
    assert sw.teaming.load_balancing is LoadBalancing.IP_HASH and not sw.teaming.failback
    assert "teaming: ip-hash, no failback" in to_dot(topo)
    with pytest.raises(TopologyError, match=r"teaming\.policy: teaming policy must be one of"):
        parse_topology(LAB.replace("TEAMING", "{policy: loadbalance_lbt}"))


async def test_failover_rarps_are_in_the_new_uplinks_capture(tmp_path: Path) -> None:
    topo = parse_topology(LAB.replace(
        "TEAMING", "{policy: failover, active: [vmnic0], standby: [vmnic1]}"))
    async with Lab(topo) as lab:
        (pcap,) = lab.capture(["esx1/vmnic1"], tmp_path)
        assert (await lab.ping("app1", "app2")).replied
        lab.set_link("esx1/vmnic0", False)
        await lab.fabric.settle()
    rows = tshark("-r", str(pcap), "-Y", "arp.opcode == 3", "-T", "fields", "-e", "eth.src",
                  "-e", "vlan.id", "-e", "arp.src.hw_mac", "-e", "vlan.etype").split("\n")
    got = sorted(r for r in rows if r)
    assert got == [f"00:50:56:00:00:0{i}\t10\t00:50:56:00:00:0{i}\t0x8035" for i in (1, 2)]
