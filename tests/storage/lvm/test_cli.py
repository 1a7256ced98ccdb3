"""`hvsim lvm ...`: the LVM2-named commands work end to end on PV files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netsim.cli.app import app
from storage.cli.lvm import parse_size
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
    for args, msg in [
        (["lvreduce", "vg0/data", "-L", "8m"], "would destroy data at byte 15728640"),
        (["lvcreate", "vg0", "big", "-L", "1g"], "insufficient free space"),
        (["lvs", "nope"], "volume group 'nope' not found"),
        (["lvextend", "vg0data", "-L", "+1m"], "expected VG/LV"),
        (["lvcreate", "vg0", "x", "-L", "ten"], "'ten' is not a size"),
    ]:
        with pytest.raises(LvmError, match=msg):
            hv(setup, *args)
    # through the real entry point: one line on stderr, exit status 2, no traceback
    env = dict(os.environ, HVSIM_LVM_DEVICES=str(setup))
    proc = subprocess.run([sys.executable, "-m", "netsim", "lvm", "lvreduce", "vg0/data", "-L",
                           "8m"], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parents[3])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: vg0/data: reducing to 2 extents would destroy")


@pytest.mark.parametrize(("text", "n"), [("100", 100 * MiB), ("4k", 4096), ("1.5g", 3 << 29),
                                         ("8s", 4096), ("512b", 512), ("2M", 2 * MiB),
                                         ("1GiB", 1 << 30)])
def test_sizes_follow_lvm2_units(text: str, n: int) -> None:
    assert parse_size(text) == n


def test_bad_size_is_refused() -> None:
    with pytest.raises(LvmError):
        parse_size("-3m")


def test_vgcfgrestore_and_vgextend_commands(setup: Path) -> None:
    backup = setup / "vg0.backup"
    hv(setup, "vgcfgbackup", "vg0", str(backup))
    hv(setup, "lvremove", "vg0/data")
    assert "nothing changed" in hv(setup, "vgcfgrestore", "vg0", "-f", str(backup), "--test")
    assert "Restored volume group vg0" in hv(setup, "vgcfgrestore", "vg0", "-f", str(backup))
    assert [r["lv_name"] for r in json.loads(hv(setup, "lvs", "--json"))["report"][0]["lv"]] \
        == ["data"]
    hv(setup, "pvcreate", str(setup / "pv2.img"), "--size", "32m")
    hv(setup, "vgextend", "vg0", str(setup / "pv2.img"))
    vgs = json.loads(hv(setup, "vgs", "--json"))["report"][0]["vg"]
    assert vgs[0]["pv_count"] == "3"


def run_hvsim(*args: str) -> str:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("kind", ["lvm", "lvhd"])
def test_sr_and_vdi_commands_on_lvm_srs(tmp_path: Path, kind: str) -> None:
    sr = str(tmp_path / "sr")
    sr_uuid = run_hvsim("sr", "create", sr, "--type", kind, "--size", "128M").strip()
    vdi = run_hvsim("vdi", "create", "--sr", sr, "--size", "10M", "--name", "disk0").strip()
    snap = run_hvsim("vdi", "snapshot", "--sr", sr, vdi).strip()
    clone = run_hvsim("vdi", "clone", "--sr", sr, vdi).strip()
    rows = {r["uuid"]: r for r in json.loads(run_hvsim("vdi", "list", "--sr", sr, "--json"))}
    assert {vdi, snap, clone} <= set(rows)
    assert rows[snap]["is_a_snapshot"] and rows[vdi]["virtual_size"] >= 10 * MiB
    prefix = "LV-" if kind == "lvm" else "VHD-"
    assert rows[vdi]["location"] == f"{prefix}{vdi}"
    run_hvsim("vdi", "destroy", "--sr", sr, snap)
    run_hvsim("vdi", "destroy", "--sr", sr, clone)
    run_hvsim("sr", "gc", sr)
    lvs = json.loads(run_hvsim("lvm", "lvs", "--json", "-d", sr))["report"][0]["lv"]
    assert [(r["vg_name"], r["lv_name"]) for r in lvs] == \
        [(f"VG_XenStorage-{sr_uuid}", f"{prefix}{vdi}")]


def test_extents_option_and_hidden_lvs(setup: Path) -> None:
    hv(setup, "lvcreate", "vg0", "half", "-l", "50%FREE")
    lvs = {r["lv_name"]: r for r in json.loads(hv(setup, "lvs", "--json"))["report"][0]["lv"]}
    assert lvs["half"]["lv_size"] == str(12 * 4 * MiB)  # (30 - 5) free extents, halved
    hv(setup, "lvcreate", "vg0", "s", "-l", "100%ORIGIN", "-s", "data")
    hv(setup, "lvcreate", "vg0", "three", "-l", "3")
    out = json.loads(hv(setup, "lvs", "-a", "--json"))["report"][0]["lv"]
    by = {r["lv_name"]: r for r in out}
    assert by["three"]["lv_size"] == str(12 * MiB) and by["s"]["lv_size"] == str(20 * MiB)
    assert by["[snapshot0]"]["lv_attr"].startswith("v")
    assert "[snapshot0]" not in hv(setup, "lvs")
    with pytest.raises(LvmError, match="needs --snapshot"):
        hv(setup, "lvcreate", "vg0", "bad", "-l", "10%ORIGIN")
