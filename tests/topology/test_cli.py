"""The topology commands as a user runs them: ping, pingall, run (pcapng per port), errors."""
from __future__ import annotations

from typer.testing import CliRunner

from netsim.cli.app import app
from netsim.wire.capture import read_pcapng
from netsim.wire.frame import parse
from tests.topology.conftest import TOPOLOGIES

runner = CliRunner()


def test_ping_through_the_router_vm() -> None:
    result = runner.invoke(app, ["ping", str(TOPOLOGIES / "xen-router.yaml"), "a1", "b1",
                                 "-c", "2"])
    assert result.exit_code == 0, result.output
    assert "2 sent, 2 received, 0% loss" in result.output
    assert "ttl=63" in result.output  # one routed hop


def test_ping_across_vlans_fails_with_status_1() -> None:
    result = runner.invoke(app, ["ping", str(TOPOLOGIES / "xen-vlans.yaml"), "vm1", "vm3",
                                 "-c", "1"])
    assert result.exit_code == 1
    assert "100% loss" in result.output


def test_ping_unknown_vm_is_one_clear_error() -> None:
    result = runner.invoke(app, ["ping", str(TOPOLOGIES / "xen-vlans.yaml"), "vm1", "nope"])
    assert result.exit_code != 0
    assert "no VM 'nope'" in str(result.exception)


def test_pingall_prints_the_matrix() -> None:
    result = runner.invoke(app, ["pingall", str(TOPOLOGIES / "three-hosts.yaml")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "reachability: three-hosts (12/30 answered)" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ app1"))
    assert row.count("✓") == 2 and row.count("·") == 3


def test_pingall_of_a_large_lab_prints_answers_per_pair_of_networks(tmp_path) -> None:
    from tests.topology.test_pingall_pacing import vlans_lab

    topo = tmp_path / "big.yaml"
    # 44 VMs; a /24 per VLAN, so cross-VLAN pings fail at once (no route) instead of waiting
    topo.write_text(vlans_lab(hosts=2, per_host_per_vlan=11, vlans=2).replace("/16", "/24"))
    result = runner.invoke(app, ["pingall", str(topo)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ v10(10)"))
    assert [c.strip() for c in row.split("│")[2:4]] == ["462/462", "0/484"], row
    assert "924/1892 answered among 44 VMs" in " ".join(result.output.split())
    small = runner.invoke(app, ["pingall", str(TOPOLOGIES / "three-hosts.yaml"), "--summary"],
                          env={"COLUMNS": "200"})
    assert small.exit_code == 0 and "12/30 answered among 6 VMs" in " ".join(small.output.split())
    assert "│ app1" not in small.output


def test_run_writes_one_pcapng_per_captured_port(tmp_path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(TOPOLOGIES / "xen-vlans.yaml"), "--out", str(out),
                                 "--capture", "eth0,eth0.5,vif1.0", "--duration", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "eth0.5.pcapng", "eth0.pcapng", "vif1.0.pcapng"]
    names, records = read_pcapng(out / "eth0.pcapng")
    assert names == ["eth0"]
    vids = {parse(frame).vid for _, _, frame, _ in records}
    assert {5, 65, 400} <= vids  # the trunk shows every VLAN's tag
    names, records = read_pcapng(out / "eth0.5.pcapng")
    assert names == ["eth0.5"] and records
    assert all(not parse(frame).tagged for _, _, frame, _ in records)  # the VLAN PIF: untagged


def test_run_all_captures_every_port(tmp_path) -> None:
    result = runner.invoke(app, ["run", str(TOPOLOGIES / "xen-router.yaml"), "--out",
                                 str(tmp_path), "--traffic", "none", "--duration", "0"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {
        "vif1.0.pcapng", "vif1.1.pcapng", "vif2.0.pcapng", "vif3.0.pcapng", "vif4.0.pcapng",
        "vif5.0.pcapng"}


def test_bad_topology_file_is_one_line_not_a_traceback(tmp_path) -> None:
    bad = tmp_path / "topology.yaml"
    bad.write_text("hosts:\n  xen1:\n    networks: {lan: {vlan: 4096}}\n")
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "netsim", "pingall", str(bad)],
                          capture_output=True, text=True, check=False,
                          cwd=TOPOLOGIES.parent, env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "topology.yaml:3: hosts.xen1.networks.lan.vlan: VLAN ID 4096 out of range" in \
        proc.stderr


def test_same_topology_same_pcaps(tmp_path) -> None:
    """On the virtual clock a run is deterministic: byte-identical captures."""
    outs = []
    for i in (1, 2):
        out = tmp_path / f"run{i}"
        result = runner.invoke(app, ["run", str(TOPOLOGIES / "xen-router.yaml"), "--out",
                                     str(out)])
        assert result.exit_code == 0, result.output
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outs[0] == outs[1]
    assert all(len(data) > 200 for data in outs[0].values())
