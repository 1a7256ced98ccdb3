"""`hvsim check`: the double-tagging paths of a plan, named, before anything runs; and the data
plane really delivers along the paths it names."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netsim.lab.check import GUIDANCE, OTHER, check_topology
from netsim.lab.lab import build_fabric
from netsim.lab.topology import parse_topology
from tests.topology.conftest import EXAMPLES

#: esx2's switch port sends VLAN 10 untagged (native-untagged): web1 (VLAN 10 on esx1) sends
#: [VID 0][VID 20]; esx1 tags it 10 over 20, core strips 10 toward esx2, esx2 sees 20.
HOLE = """\
name: hole
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups:
      Web: {vlan: 10}
    vms:
      web1: {nics: [{network: Web, ip: 10.0.10.1/24}]}
  esx2:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups:
      Web: {vlan: 10}
      Db: {vlan: 20}
    vms:
      web2: {nics: [{network: Web, ip: 10.0.10.2/24}]}
      db2: {nics: [{network: Db, ip: 10.0.20.2/24}]}
physical:
  core:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10, 20]}
      esx2.vmnic0: {mode: native-untagged, vlan: 10, vlans: [10, 20]}
"""
#: the same plan with every VLAN tagged on every trunk: no hole
FIXED = HOLE.replace("{mode: native-untagged, vlan: 10, vlans: [10, 20]}",
                     "{mode: trunk, vlans: [10, 20]}")

#: an EST guest (port group VLAN 0) whose untagged frames land in the native VLAN 30 of a
#: trunk that also carries 40: a priority tag over 40 puts its frame into VLAN 40 on esx2
EST = """\
name: est
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups: {Plain: {vlan: 0}}
    vms:
      guest: {nics: [{network: Plain, ip: 10.0.30.1/24}]}
  esx2:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups: {Secure: {vlan: 40}}
    vms:
      vault: {nics: [{network: Secure, ip: 10.0.40.1/24}]}
physical:
  core:
    ports:
      esx1.vmnic0: {mode: native-untagged, vlan: 30, vlans: [30, 40]}
      esx2.vmnic0: {mode: trunk, vlans: [30, 40]}
"""

#: a VGT guest tags VLAN 10 over 20; VLAN 10 leaves untagged toward esx2: into VLAN 20 there
VGT = """\
name: vgt
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups: {Trunk: {vlan: 4095}}
    vms:
      router: {nics: [{network: Trunk, vlan: 10, ip: 10.0.10.1/24}]}
  esx2:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups: {Db: {vlan: 20}}
    vms:
      db: {nics: [{network: Db, ip: 10.0.20.2/24}]}
physical:
  core:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10]}
      esx2.vmnic0: {mode: native-untagged, vlan: 10, vlans: [20]}
"""


#: XenServer: vm7 on xen1's untagged network; the switch port puts xen1's untagged frames in
#: native VLAN 1 and also trunks 5. A priority tag over 5 leaves eth0 as [5] (VLAN 0 leaves the
#: bridge untagged), enters VLAN 5, and reaches xen2's eth0.5 network.
XEN = """\
name: xen
hosts:
  xen1:
    type: xen
    pifs: {eth0: {}}
    switches: {xenbr0: {uplinks: [eth0]}}
    networks: {lan: {switch: xenbr0}}
    vms:
      vm7: {vifs: [{network: lan, ip: 10.0.1.7/24}]}
  xen2:
    type: xen
    pifs: {eth0: {}}
    switches: {xenbr0: {uplinks: [eth0]}}
    networks: {vlan5: {switch: xenbr0, vlan: 5}}
    vms:
      vm1: {vifs: [{network: vlan5, ip: 10.0.5.1/24}]}
physical:
  trunk:
    ports:
      xen1.eth0: {mode: native-untagged, vlan: 1, vlans: [1, 5]}
      xen2.eth0: {mode: trunk, vlans: [5]}
"""


#: a VGT guest (a router VM that reads tags) and an EST guest on one vSwitch: the EST guest's
#: priority tag over VLAN 20 reaches the VGT guest untagged (VLAN 0 leaves a VGT port so), and
#: the router reads VLAN 20
VGT_READER = """\
name: reader
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches: {vSwitch0: {uplinks: [vmnic0]}}
    port_groups:
      Plain: {vlan: 0}
      Trunk: {vlan: 4095}
      Db: {vlan: 20}
    vms:
      guest: {nics: [{network: Plain, ip: 10.0.0.1/24}]}
      router: {nics: [{network: Trunk, vlan: 20, ip: 10.0.20.1/24}]}
      db: {nics: [{network: Db, ip: 10.0.20.2/24}]}
"""


def _hvsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsim", *args], capture_output=True,
                          text=True, timeout=120)


def test_check_names_the_hole_its_ports_and_vlans_and_exits_1(tmp_path: Path) -> None:
    f = tmp_path / "hole.yaml"
    f.write_text(HOLE)
    r = _hvsim("check", str(f))
    assert r.returncode == 1, r.stderr
    assert r.stderr == ""  # results on stdout
    first, guidance = r.stdout.strip().splitlines()
    assert first.startswith("VLAN hole: VLAN 10 leaves core/esx2.vmnic0 untagged into "
                            "esx2/vmnic0 (trunk all)")
    assert "lands in VLAN 20" in first
    assert ("Senders: esx1/web1.eth0 (port group Web, priority tag over a tag of its choice)"
            in first)
    assert "Delivered to: esx2/db2.eth0 (port group Db, VLAN 20)" in first
    assert "web2" not in first  # same VLAN number: not a crossing
    assert guidance == GUIDANCE + "."
    assert "native" in guidance and "VGT" in guidance


def test_a_plan_that_tags_every_vlan_is_clean_exit_0(tmp_path: Path) -> None:
    f = tmp_path / "fixed.yaml"
    f.write_text(FIXED)
    r = _hvsim("check", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("no VLAN holes")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_example_topologies_are_clean(path: Path) -> None:
    assert check_topology(parse_topology(path.read_text(), str(path))).holes == []


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    r = _hvsim("check", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "missing.yaml" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(HOLE.replace("vlan: 20}", "vlan: 5000}"))
    r = _hvsim("check", str(bad))
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "Traceback" not in r.stderr


def test_est_guest_in_a_native_vlan_and_vgt_guest_are_found() -> None:
    est = check_topology(parse_topology(EST, "est.yaml"))
    assert {(h.source, h.exposed_at, h.exposed_vlan, h.into_vlan, h.victims) for h in est.holes
            } == {("esx1/guest.eth0", "esx1/vmnic0", 0, 40, (("esx2/vault.eth0", 40),))}
    vgt = check_topology(parse_topology(VGT, "vgt.yaml"))
    assert {(h.source, h.exposed_at, h.into_vlan, h.victims) for h in vgt.holes} == {
        ("esx1/router.eth0", "core/esx2.vmnic0", 20, (("esx2/db.eth0", 20),))}
    assert vgt.vgt_ports == ["esx1/router.eth0"]
    xen = check_topology(parse_topology(XEN, "xen.yaml"))
    assert {(h.source, h.exposed_at, h.exposed_vlan, h.entering, h.into_vlan, h.victims)
            for h in xen.holes} == {
        ("xen1/vif1.0", "xen1/eth0", 0, "trunk/xen1.eth0", 5, (("xen2/vif1.0", 0),))}


@pytest.mark.parametrize(("text", "sender", "victim", "frame_tags"), [
    (HOLE, "web1", "db2", "8100 0000 8100 0014"),  # priority tag over VLAN 20
    (HOLE, "web1", "db2", "88a8 0000 8100 0014"),  # an 802.1ad priority tag does the same
    (EST, "guest", "vault", "8100 0000 8100 0028"),
    (VGT, "router", "db", "8100 000a 8100 0014"),  # VGT: VLAN 10 over 20
    (XEN, "vm7", "vm1", "8100 0000 8100 0005"),  # through xen2's VLAN PIF eth0.5
])
async def test_the_data_plane_delivers_along_the_hole_check_names(
        text: str, sender: str, victim: str, frame_tags: str) -> None:
    fab = build_fabric(parse_topology(text, "t.yaml"))
    src, dst = fab[sender].vnic, fab[victim].vnic
    frame = (b"\xff" * 6 + src.mac + bytes.fromhex(frame_tags.replace(" ", "")) + b"\x08\x00"
             + bytes(46))
    async with fab:
        src.send(frame)
        await fab.settle()
    got = dst.drain()
    assert len(got) == 1 and got[0][12:14] == b"\x08\x00"  # in the victim's VLAN, untagged
    # and on the fixed plan, nothing gets through
    if text is HOLE:
        fab = build_fabric(parse_topology(FIXED, "t.yaml"))
        async with fab:
            fab[sender].vnic.send(frame)
            await fab.settle()
        assert fab[victim].vnic.drain() == []


def test_run_and_replay_warn_on_stderr(tmp_path: Path) -> None:
    f = tmp_path / "hole.yaml"
    f.write_text(HOLE)
    r = _hvsim("run", str(f), "--out", str(tmp_path / "out"), "--traffic", "none",
               "--duration", "0.1")
    assert r.returncode == 0, r.stderr
    assert "warning: VLAN hole: VLAN 10 leaves core/esx2.vmnic0" in r.stderr
    assert "VLAN hole" not in r.stdout
    scn = tmp_path / "s.yaml"
    scn.write_text("name: s\ntopology: hole.yaml\nsteps:\n  - {at: 100ms, flush_mac: {}}\n")
    r = _hvsim("replay", str(scn), "--out", str(tmp_path / "rout"))
    assert "warning: VLAN hole" in r.stderr, r.stdout + r.stderr
    f.write_text(FIXED)
    r = _hvsim("run", str(f), "--out", str(tmp_path / "out2"), "--traffic", "none",
               "--duration", "0.1")
    assert r.returncode == 0 and "warning" not in r.stderr


def test_a_vgt_guest_that_reads_an_exposed_inner_tag_is_reported() -> None:
    rep = check_topology(parse_topology(VGT_READER, "reader.yaml"))
    # VLAN 20 (db's), and any VLAN no port names: the router reads whatever tag comes
    assert {(h.source, h.exposed_at, h.into_vlan, h.victims) for h in rep.holes} == {
        ("esx1/guest.eth0", "esx1/router.eth0", 20, (("esx1/router.eth0", 20),)),
        ("esx1/guest.eth0", "esx1/router.eth0", OTHER, (("esx1/router.eth0", OTHER),))}
    first = rep.lines()[0]
    assert first.startswith("VLAN hole: VLAN 0 (untagged) reaches esx1/router.eth0 (trunk all, "
                            "a guest that reads tags) untagged")
    assert "Senders: esx1/guest.eth0 (port group Plain, priority tag" in first
    assert "lands in VLAN 20, any other VLAN" in first
    assert ("Delivered to: esx1/router.eth0 (port group Trunk, VLAN 20), esx1/router.eth0 "
            "(port group Trunk, VLAN other)") in first
