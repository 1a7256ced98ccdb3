"""Pictures: every example draws to SVG and PNG with its hosts, VLANs, PIFs and VMs labelled."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from netsim.cli.app import app
from netsim.lab.draw import to_dot
from netsim.lab.topology import load_topology
from tests.topology.conftest import EXAMPLES, TOPOLOGIES

runner = CliRunner()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_draws(path, tmp_path) -> None:
    for suffix in ("svg", "png"):
        out = tmp_path / f"{path.stem}.{suffix}"
        result = runner.invoke(app, ["draw", str(path), "-o", str(out)])
        assert result.exit_code == 0, result.output
        data = out.read_bytes()
        assert data.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in data
    svg = (tmp_path / f"{path.stem}.svg").read_text()
    topo = load_topology(path)
    for vm in topo.vms:
        assert f">{vm.name}" in svg
    for host in topo.hosts:
        for pif in host.pifs:
            assert f">{pif.name}<" in svg


def test_xen_picture_names_vlans_and_vlan_pifs() -> None:
    dot = to_dot(load_topology(TOPOLOGIES / "xen-vlans.yaml"))
    for text in ("VLAN 5", "VLAN 65", "VLAN 400", "untagged", "eth0.400", "trunk 5,65,400",
                 "vif1.0\\n10.0.5.1/24", "xen1 (XenServer)"):
        assert text in dot


def test_standby_uplink_is_drawn_dashed() -> None:
    dot = to_dot(load_topology(TOPOLOGIES / "esxi-vss.yaml"))
    assert 'style=dashed, label="standby"' in dot
    assert "shaped 10 Mbit/s" in dot


def test_port_group_teaming_override_is_labelled() -> None:
    from tests.topology.test_lab import per_group_team

    dot = to_dot(per_group_team().build())
    assert "Backup\\nVLAN 20\\nteaming: vmnic1 active, vmnic0 standby" in dot


def test_unknown_picture_format_is_one_clear_line(tmp_path) -> None:
    result = runner.invoke(app, ["draw", str(EXAMPLES[0]), "-o", str(tmp_path / "x.gif")])
    assert result.exit_code != 0
    assert "cannot draw to .gif" in str(result.exception) + result.output
