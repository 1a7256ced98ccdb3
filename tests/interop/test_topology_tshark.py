"""tshark reads what `hvsim run` captured from the seed's XenServer VLAN example."""
from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from netsim.cli.app import app
from tests.topology.conftest import TOPOLOGIES

pytestmark = pytest.mark.interop


def tshark(path, *fields: str) -> list[list[str]]:
    args = ["tshark", "-r", str(path), "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    proc = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    return [line.split("\t") for line in proc.stdout.splitlines()]


def test_tshark_sees_port_names_vlan_tags_and_pings(tmp_path) -> None:
    result = CliRunner().invoke(app, ["run", str(TOPOLOGIES / "xen-vlans.yaml"), "--out",
                                      str(tmp_path), "--capture", "eth0,eth0.65,vif1.0"])
    assert result.exit_code == 0, result.output
    rows = tshark(tmp_path / "eth0.pcapng", "frame.interface_name", "vlan.id")
    assert {r[0] for r in rows} == {"eth0"}
    assert {r[1] for r in rows if r[1]} == {"5", "65", "400"}
    rows = tshark(tmp_path / "eth0.65.pcapng", "frame.interface_name", "vlan.id")
    assert {r[0] for r in rows} == {"eth0.65"}
    assert all(r[1] == "" for r in rows)  # the VLAN PIF side is untagged
    rows = tshark(tmp_path / "vif1.0.pcapng", "icmp.type", "ip.src", "ip.dst")
    echoes = {(r[0], r[1], r[2]) for r in rows if r[0]}
    assert ("8", "10.0.5.1", "10.0.5.2") in echoes and ("0", "10.0.5.2", "10.0.5.1") in echoes
