"""Topology and YAML input that used to end in a traceback, a hang or silent nonsense: each is
now one `file:line: key: message` on stderr with exit status 2."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from netsim.errors import ScenarioError, TopologyError
from netsim.lab.topology import parse_topology
from netsim.scenario.model import parse_scenario

ROOT = Path(__file__).resolve().parents[2]

HEAD = """hosts:
  xen1:
    type: xen
    pifs: {eth0: {}}
    switches: {xenbr0: {uplinks: [eth0]}}
"""


def hvsim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsim", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                       "PATH": "/usr/bin:/bin"})


def one_line_exit_2(tmp_path: Path, text: str | bytes, expect: str) -> str:
    path = tmp_path / "t.yaml"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    res = hvsim("draw", "t.yaml", "-o", "t.dot", cwd=tmp_path)
    err = res.stderr.strip()
    assert res.returncode == 2, res.stdout + res.stderr
    assert "\n" not in err and "Traceback" not in err, err
    assert expect in err, err
    assert not (tmp_path / "t.dot").exists()
    return err


def test_infinite_shaping_rate(tmp_path: Path) -> None:
    one_line_exit_2(tmp_path, HEAD + "    networks: {lan: {switch: xenbr0, shaping: "
                    "{average: .inf}}}\n",
                    "t.yaml:6: hosts.xen1.networks.lan.shaping.average: expected a finite "
                    "number, got inf")


def test_latin1_file(tmp_path: Path) -> None:
    text = (HEAD + "    networks: {lan: {switch: xenbr0}}\n# caf\xe9\n").encode("latin-1")
    one_line_exit_2(tmp_path, text, "t.yaml:7: not UTF-8 text: byte 0xe9")


def test_memory_disk_larger_than_any_ram(tmp_path: Path) -> None:
    one_line_exit_2(tmp_path, HEAD + "    networks: {lan: {switch: xenbr0}}\n"
                    "    vms:\n      vm1: {vifs: [{network: lan}], disks: ['mem:99999999T']}\n",
                    "t.yaml:8: hosts.xen1.vms.vm1.disks[0]: mem:99999999T is "
                    f"{99999999 * 2**40:,} bytes, more than this machine's")


def test_backwards_vlan_range_is_refused_not_empty(tmp_path: Path) -> None:
    one_line_exit_2(tmp_path, HEAD + "    networks: {lan: {switch: xenbr0}}\n"
                    "physical:\n  sw:\n    ports:\n      xen1.eth0: {mode: trunk, "
                    "vlans: [\"400-5\"]}\n",
                    "t.yaml:10: physical.sw.ports.xen1.eth0.vlans[0]: VLAN range '400-5' runs "
                    "backwards")


def test_vm_named_like_a_port_is_refused(tmp_path: Path) -> None:
    """vm `vif2.0` would hide vm2's port vif2.0 from every lookup by name."""
    one_line_exit_2(tmp_path, HEAD + "    networks: {lan: {switch: xenbr0}}\n    vms:\n"
                    "      vm1: {vifs: [{network: lan}]}\n"
                    "      vif2.0: {vifs: [{network: lan}]}\n",
                    "t.yaml:9: hosts.xen1.vms.vif2.0: VM name 'vif2.0' is also the name of "
                    "port xen1/vif2.0 (of VM vif2.0)")
    with pytest.raises(TopologyError, match="also the name of PIF xen1/eth0"):
        parse_topology(HEAD + "    networks: {lan: {switch: xenbr0}}\n    vms:\n"
                       "      eth0: {vifs: [{network: lan}]}\n")


def test_same_ip_in_one_broadcast_domain_names_both(tmp_path: Path) -> None:
    err = one_line_exit_2(
        tmp_path, HEAD + "    networks: {lan: {switch: xenbr0}, v5: {switch: xenbr0, vlan: 5}}\n"
        "    vms:\n"
        "      a: {vifs: [{network: lan, ip: 10.0.0.1/24}]}\n"
        "      b: {vifs: [{network: v5, ip: 10.0.0.1/24}]}\n"      # another VLAN: fine
        "      c: {vifs: [{network: lan, ip: 10.0.0.1/24}]}\n",
        "t.yaml:10: hosts.xen1.vms.c.vifs[0].ip: IP address 10.0.0.1 is also VM a's, in the "
        "same broadcast domain (at t.yaml:8: hosts.xen1.vms.a.vifs[0].ip)")
    assert "VM b" not in err


def test_same_ip_across_hosts_joined_by_a_trunk() -> None:
    two = """hosts:
  xen1:
    pifs: {eth0: {}}
    switches: {xenbr0: {uplinks: [eth0]}}
    networks: {v5: {switch: xenbr0, vlan: 5}}
    vms: {a: {vifs: [{network: v5, ip: 10.0.0.1/24}]}}
  xen2:
    pifs: {eth0: {}}
    switches: {xenbr0: {uplinks: [eth0]}}
    networks: {v5: {switch: xenbr0, vlan: 5}}
    vms: {b: {vifs: [{network: v5, ip: 10.0.0.1/24}]}}
physical:
  sw:
    ports:
      xen1.eth0: {mode: trunk, vlans: [VLANS]}
      xen2.eth0: {mode: trunk, vlans: [5]}
"""
    with pytest.raises(TopologyError, match=r"t\.yaml:11: .*10\.0\.0\.1 is also VM a's"):
        parse_topology(two.replace("VLANS", "5"), "t.yaml")
    parse_topology(two.replace("VLANS", "6"), "t.yaml")  # VLAN 5 does not cross: two domains


def test_shipped_topologies_still_load() -> None:
    for path in (ROOT / "topologies").glob("*.yaml"):
        parse_topology(path.read_text(), path.name)


# -- item 9: alias bombs, refused before they expand --------------------------------------

BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)]) + "\n"


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    t = time.process_time()
    with pytest.raises(TopologyError, match=r"t\.yaml:\d+: aliases expand this document from "
                                            r"\d+ written values to [\d,]+ .*alias bomb"):
        parse_topology(BOMB, "t.yaml")
    with pytest.raises(ScenarioError, match="alias bomb"):
        parse_scenario("name: x\ndescription: &z [1]\n" + BOMB, "s.yaml")
    assert time.process_time() - t < 5   # not the minutes (and GBs) it took to expand
    one_line_exit_2(tmp_path, BOMB, "alias bomb")


def test_small_alias_bomb_topology_with_a_bad_key(tmp_path: Path) -> None:
    """The 345-byte topology that took 29.9 s and 2.4 GB to say `unknown key`."""
    text = ("x: &x [a, b, c, d, e, f, g, h, i, j]\n" + "".join(
        f"x{i}: &x{i} [{', '.join([f'*x{i - 1}' if i > 1 else '*x'] * 10)}]\n"
        for i in range(1, 7)) + "hosts: {}\n")
    one_line_exit_2(tmp_path, text, "alias bomb")


def test_ordinary_aliases_still_work() -> None:
    topo = parse_topology(HEAD + "    networks:\n      lan: &net {switch: xenbr0}\n"
                          "      lan2: *net\n")
    assert [n.name for n in topo.hosts[0].networks] == ["lan", "lan2"]
    with pytest.raises(TopologyError, match="loop"):
        parse_topology("hosts: &h {xen1: {pifs: *h}}\n")
