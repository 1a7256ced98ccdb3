"""`hvsim demo`: runs the XenServer VLAN example, prints the tables, writes one pcapng per port."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from netsim.cli.app import app
from netsim.lab import demo

runner = CliRunner()


def test_demo_prints_who_reached_whom_and_writes_pcaps(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "vm1 ARP who-has 10.5.0.2" in text
    assert "tagged-on-access" in text and "not-promiscuous" in text
    assert "did not go as expected" not in text
    assert "MAC table of phys" in text and "00:16:3e:00:41:03" in text
    assert str(out) in text.replace("\n", "")
    names = sorted(p.name for p in out.glob("*.pcapng"))
    assert "eth0.pcapng" in names and "vif1.0.pcapng" in names and len(names) == 16


def test_demo_help_says_what_it_does_with_an_example() -> None:
    result = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "VLANs 5, 65, 400" in result.output and "Example: hvsim demo" in result.output


def test_demo_to_an_unwritable_place_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "netsim", "demo", "--out", str(blocker / "sub")],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2
    assert "cannot create capture directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_same_start_time_gives_byte_identical_captures(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    asyncio.run(demo.run(a, start_ns=1_790_000_000_000_000_000))
    asyncio.run(demo.run(b, start_ns=1_790_000_000_000_000_000))
    files = sorted(p.name for p in a.glob("*.pcapng"))
    assert len(files) == 16
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in files)
