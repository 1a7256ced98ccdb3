"""Scenario captures open in tshark with the ports' names, the tags where the wire has them, and
the virtual clock's timestamps."""
from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from netsim.scenario.model import load_scenario
from netsim.scenario.runner import run_scenario

ROOT = Path(__file__).resolve().parents[2]


def test_vlan_isolation_captures_read_by_tshark(tmp_path: Path) -> None:
    scn = load_scenario(ROOT / "topologies" / "scenarios" / "xen-vlan-isolation.yaml")
    report = asyncio.run(run_scenario(scn, out_dir=tmp_path))
    assert report.passed
    fields = ["frame.interface_name", "vlan.id", "eth.src", "udp.dstport", "frame.time_epoch"]
    args = [a for f in fields for a in ("-e", f)]
    rows = {}
    for name in ("eth0.pcapng", "vif2.0.pcapng"):
        out = subprocess.run(["tshark", "-r", str(tmp_path / name), "-Y", "udp.dstport == 9",
                              "-T", "fields", *args], capture_output=True, text=True, check=True)
        rows[name] = [line.split("\t") for line in out.stdout.splitlines()]
    wire, guest = rows["eth0.pcapng"], rows["vif2.0.pcapng"]
    assert [r[:4] for r in wire] == [["eth0", "5", "00:16:3e:00:05:01", "9"]] * 3
    assert [r[:4] for r in guest] == [["vif2.0", "", "00:16:3e:00:05:01", "9"]] * 3
    # 2026-01-01T00:00:00Z + 10 ms, then 100/s
    assert [r[4] for r in wire] == ["1767225600.010000000", "1767225600.020000000",
                                    "1767225600.030000000"]
