"""Wireshark's extcap protocol: tshark lists the ports of a running lab and captures them live,
with the right VLAN tags, filtered by hvsim's filter language."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.live.conftest import Served


def extcap(served: Served, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netsim.live.extcap", *args], env=served.env,
                          capture_output=True, text=True, timeout=60, check=False)


def install(served: Served) -> Path:
    p = subprocess.run([sys.executable, "-m", "netsim", "extcap", "--install"],
                       env=served.env, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    path = Path(served.env["XDG_CONFIG_HOME"]) / "wireshark" / "extcap" / "hvsim"
    assert path.exists() and path.stat().st_mode & 0o111
    return path


def tshark(served: Served, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tshark", *args], env=served.env, capture_output=True, text=True,
                          timeout=90, check=False)


def test_extcap_protocol_answers(served_xen) -> None:
    r = extcap(served_xen, "--extcap-interfaces", "--extcap-version=4.0")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("extcap {version=")
    assert "interface {value=hvsim-xen-vlans/xen1/vif1.0}{display=hvsim: xen-vlans/vif1.0}" \
        in lines
    r = extcap(served_xen, "--extcap-dlts", "--extcap-interface", "hvsim-xen-vlans/xen1/eth0")
    assert r.stdout.startswith("dlt {number=1}{name=EN10MB}")
    r = extcap(served_xen, "--extcap-config", "--extcap-interface", "hvsim-xen-vlans/xen1/eth0")
    assert r.stdout.startswith("arg {number=0}{call=--limit}")
    ok = extcap(served_xen, "--extcap-interface", "hvsim-xen-vlans/xen1/eth0",
                "--extcap-capture-filter", "vlan 65 and icmp")
    bad = extcap(served_xen, "--extcap-interface", "hvsim-xen-vlans/xen1/eth0",
                 "--extcap-capture-filter", "vlan 65 and and")
    assert ok.returncode == 0 and bad.returncode != 0 and "position" in bad.stdout
    r = extcap(served_xen, "--capture", "--extcap-interface", "hvsim-nolab/eth0", "--fifo",
               "/dev/null")
    assert r.returncode == 2 and "no running lab named 'nolab'" in r.stderr


@pytest.mark.interop
def test_tshark_lists_and_captures_lab_ports(served_xen, tmp_path) -> None:
    install(served_xen)
    d = tshark(served_xen, "-D")
    assert d.returncode == 0, d.stderr
    assert "(hvsim: xen-vlans/vif1.0)" in d.stdout and "(hvsim: xen-vlans/eth0)" in d.stdout
    out = tmp_path / "eth0.pcapng"
    c = tshark(served_xen, "-i", "hvsim-xen-vlans/xen1/eth0", "-a", "duration:2", "-w", str(out))
    assert c.returncode == 0, c.stderr
    r = tshark(served_xen, "-r", str(out), "-T", "fields", "-e", "frame.interface_name",
               "-e", "vlan.id", "-e", "eth.src")
    rows = [ln.split("\t") for ln in r.stdout.splitlines() if ln]
    assert rows, "pingall rounds send ARP out of eth0 every 0.2 s"
    assert {row[0] for row in rows} == {"eth0"}
    # the trunk carries VLANs 5, 65 and 400 tagged and xenbr0's network untagged; each VM's
    # frames carry its own network's tag
    vlan_of = {"00:16:3e:00:05:01": "5", "00:16:3e:00:05:02": "5", "00:16:3e:00:41:03": "65",
               "00:16:3e:00:41:04": "65", "00:16:3e:01:90:05": "400", "00:16:3e:01:90:06": "400"}
    for _, vid, src in rows:
        assert vid == vlan_of.get(src, ""), (vid, src)
    assert "5" in {vid for _, vid, _ in rows}
    f = tshark(served_xen, "-i", "hvsim-xen-vlans/xen1/eth0", "-f", "vlan 5", "-a",
               "duration:2", "-T", "fields", "-e", "vlan.id")
    vids = [ln for ln in f.stdout.splitlines() if ln]
    assert vids and set(vids) == {"5"}


def test_capture_without_a_running_lab_is_one_clear_line(tmp_path) -> None:
    import os

    env = {**os.environ, "HVSIM_RUN_DIR": str(tmp_path / "empty")}
    for args, what in ((["vif1.0", "-w", "-"], "no running lab"),
                       (["vif1.0", "-w", "-", "--filter", "vlan and"], "filter")):
        p = subprocess.run([sys.executable, "-m", "netsim", "capture", *args], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 2 and what in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
