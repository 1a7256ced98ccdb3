"""`hvsim lvm ...`: the LVM2-named commands work end to end on PV files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netsim.cli import app
from storage.commands.lvm import parse_size
from storage.errors import LvmError

runner = CliRunner()
MiB = 1 << 20


def hv(tmp_path: Path, *args: str) -> str:
    result = runner.invoke(app, ["lvm", *args], env={"HVSIM_LVM_DEVICES": str(tmp_path)})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    pv0, pv1 = tmp_path / "pv0.img", tmp_path / "pv1.img"
    out = hv(tmp_path, "pvcreate", str(pv0), str(pv1), "--size", "64m")
    assert 'Physical volume "' in out
    hv(tmp_path, "vgcreate", "vg0", str(pv0), str(pv1))
    hv(tmp_path, "lvcreate", "vg0", "data", "-L", "20m")
    return tmp_path


def test_lvs_vgs_pvs_reports(setup: Path) -> None:
    hv(setup, "lvcreate", "vg0", "-n", "snap", "-L", "8m", "--snapshot", "data")
    lvs = json.loads(hv(setup, "lvs", "--json"))["report"][0]["lv"]
    by = {r["lv_name"]: r for r in lvs}
    assert by["data"]["lv_size"] == str(20 * MiB) and by["data"]["lv_attr"].startswith("o")
    assert by["snap"]["origin"] == "data" and by["snap"]["lv_attr"].startswith("s")
    vgs = json.loads(hv(setup, "vgs", "--reportformat", "json"))["report"][0]["vg"]
    assert vgs[0]["vg_name"] == "vg0" and vgs[0]["lv_count"] == "2"
    assert vgs[0]["snap_count"] == "1"
    pvs = json.loads(hv(setup, "pvs", "--json"))["report"][0]["pv"]
    assert {p["vg_name"] for p in pvs} == {"vg0"} and len(pvs) == 2
    table = hv(setup, "lvs")
    assert "20.00m" in table and "snap" in table


def test_write_snapshot_read_merge(setup: Path) -> None:
    src = setup / "in.bin"
    payload = os.urandom(3 * MiB + 123)
    src.write_bytes(payload)
    hv(setup, "lvwrite", "vg0/data", "-i", str(src))
    hv(setup, "lvcreate", "vg0", "snap", "-L", "8m", "-s", "data")
    src.write_bytes(b"overwritten" * 1000)
    hv(setup, "lvwrite", "vg0/data", "-i", str(src), "--offset", "1m")
    out = setup / "out.bin"
    hv(setup, "lvread", "vg0/snap", "-o", str(out), "--length", str(len(payload)))
    assert out.read_bytes() == payload
    hv(setup, "lvconvert", "--merge", "vg0/snap")
    hv(setup, "lvread", "vg0/data", "-o", str(out), "--length", str(len(payload)))
    assert out.read_bytes() == payload


def test_resize_rename_remove_and_backup(setup: Path) -> None:
    out = hv(setup, "lvextend", "vg0/data", "-L", "+10m")
    assert "boundary between physical extents: 32.00m" in out and "to 32.00m" in out
    assert "to 12.00m" in hv(setup, "lvreduce", "vg0/data", "-L", "12m")
    hv(setup, "lvrename", "vg0", "data", "d2")
    backup = setup / "vg0.backup"
    hv(setup, "vgcfgbackup", "vg0", "-f", str(backup))
    text = backup.read_text()
    assert "\t\td2 {\n" in text and "extent_count = 3\t# 12 Megabytes" in text
    hv(setup, "lvremove", "vg0/d2")
    assert json.loads(hv(setup, "lvs", "--json"))["report"][0]["lv"] == []


def test_user_mistakes_are_one_line_errors(setup: Path) -> None:
    (setup / "in.bin").write_bytes(b"x" * 100)
    hv(setup, "lvwrite", "vg0/data", "-i", str(setup / "in.bin"), "--offset", "15m")
    env = dict(os.environ, HVSIM_LVM_DEVICES=str(setup))
    for args, msg in [
        (["lvreduce", "vg0/data", "-L", "8m"], "would destroy data at byte 15728640"),
        (["lvcreate", "vg0", "big", "-L", "1g"], "insufficient free space"),
        (["lvs", "nope"], "volume group 'nope' not found"),
        (["lvextend", "vg0data", "-L", "+1m"], "expected VG/LV"),
        (["lvcreate", "vg0", "x", "-L", "ten"], "invalid size 'ten'"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "netsim", "lvm", *args], env=env,
                              capture_output=True, text=True, cwd=Path(__file__).parents[3])
        assert proc.returncode == 2, (args, proc.stderr)
        assert msg in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(("text", "n"), [("100", 100 * MiB), ("4k", 4096), ("1.5g", 3 << 29),
                                         ("8s", 4096), ("512b", 512), ("2M", 2 * MiB),
                                         ("1GiB", 1 << 30)])
def test_sizes_follow_lvm2_units(text: str, n: int) -> None:
    assert parse_size(text) == n


def test_bad_size_is_refused() -> None:
    with pytest.raises(LvmError):
        parse_size("-3m")
