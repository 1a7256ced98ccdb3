"""The `hvsim vhd|sr|vdi` commands, run in-process (and once as a real process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netsim.cli.app import app
from storage.cli.vhd import parse_size
from storage.errors import StorageError

runner = CliRunner()
MiB = 2**20


def ok(*args: object) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


def test_parse_size() -> None:
    assert parse_size("512") == 512 and parse_size("64K") == 65536
    assert parse_size("10M") == 10 * MiB and parse_size("2G") == 2 * 1024 * MiB
    assert parse_size("1.5k") == 1536 and parse_size("3MiB") == 3 * MiB


def test_create_info_write_read_export_coalesce(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    out = ok("vhd", "create", base, "--size", "64M", "--block-size", "1M")
    assert "67125248" in out and "rounded up" in out
    ok("vhd", "create", child, "--parent", base)
    payload = os.urandom(10_000)
    (tmp_path / "in.bin").write_bytes(payload)
    ok("vhd", "write", child, "--offset", "1000", "--input", tmp_path / "in.bin")
    info = json.loads(ok("vhd", "info", child, "--json"))
    assert info["type"] == "differencing" and info["virtual_size"] == 67125248
    assert info["block_size"] == MiB and info["chain_depth"] == 2
    assert info["parent_path"] == str(base) and info["allocated_blocks"] == 1
    assert info["parent_uuid"] == json.loads(ok("vhd", "info", base, "--json"))["uuid"]
    ok("vhd", "read", child, "--offset", "1000", "--length", "10000", "--output",
       tmp_path / "o.bin")
    assert (tmp_path / "o.bin").read_bytes() == payload
    ok("vhd", "export", child, tmp_path / "flat.raw")
    flat = (tmp_path / "flat.raw").read_bytes()
    assert len(flat) == 67125248 and flat[1000:11000] == payload
    assert flat[:1000] == bytes(1000) and flat[11000:] == bytes(len(flat) - 11000)
    ok("vhd", "check", child)
    ok("vhd", "coalesce", child)
    ok("vhd", "read", base, "--offset", "1000", "--length", "10000", "--output",
       tmp_path / "o2.bin")
    assert (tmp_path / "o2.bin").read_bytes() == payload
    assert "134250496" in ok("vhd", "resize", base, "--size", "128M")
    fixed = tmp_path / "fixed.vhd"
    ok("vhd", "create", fixed, "--size", "1M", "--type", "fixed")
    assert fixed.stat().st_size == json.loads(ok("vhd", "info", fixed, "--json"))[
        "virtual_size"] + 512


def test_check_exits_non_zero_with_one_line_per_problem(tmp_path: Path) -> None:
    p = tmp_path / "d.vhd"
    ok("vhd", "create", p, "--size", "4M")
    with open(p, "r+b") as f:
        f.seek(-400, os.SEEK_END)
        f.write(b"\xff")
    res = runner.invoke(app, ["vhd", "check", str(p)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "'checksum'" in lines[0] and str(p) in lines[0]
    res = runner.invoke(app, ["vhd", "read", str(p), "--offset", "0", "--length", "1",
                              "--output", str(tmp_path / "x")])
    assert isinstance(res.exception, StorageError)   # main() prints it as one line, exit 2


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.vhd"
    junk.write_bytes(b"not a vhd" * 100)
    proc = subprocess.run([sys.executable, "-m", "netsim", "vhd", "info", str(junk)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not a VHD" in proc.stderr
    assert proc.stderr.startswith("error: ")


def test_sr_and_vdi_commands(tmp_path: Path) -> None:
    sr = tmp_path / "sr"
    ok("sr", "create", sr, "--type", "file")
    uuid = ok("vdi", "create", "--sr", sr, "--size", "8M", "--name", "disk0").strip()
    assert len(uuid) == 36
    snap = ok("vdi", "snapshot", "--sr", sr, uuid).strip()
    clone = ok("vdi", "clone", "--sr", sr, uuid).strip()
    rows = {r["uuid"]: r for r in json.loads(ok("vdi", "list", "--sr", sr, "--json"))}
    assert set(rows) >= {uuid, snap, clone} and len(rows) == 5     # + two base copies
    assert rows[snap]["is_a_snapshot"] and rows[rows[uuid]["parent"]]["hidden"]
    assert rows[clone]["parent"] != rows[snap]["parent"]            # the clone made a new base
    ok("vdi", "destroy", "--sr", sr, snap)
    ok("vdi", "destroy", "--sr", sr, clone)
    out = ok("sr", "gc", sr)
    assert "coalesced" in out
    rows = json.loads(ok("vdi", "list", "--sr", sr, "--json"))
    assert [r["uuid"] for r in rows] == [uuid] and rows[0]["parent"] is None
    res = runner.invoke(app, ["vdi", "destroy", "--sr", str(sr), "nope-nope"])
    assert isinstance(res.exception, StorageError) and "no VDI" in str(res.exception)


@pytest.mark.parametrize("cmd", [["vhd", "--help"], ["sr", "--help"], ["vdi", "--help"]])
def test_help_has_examples(cmd: list[str]) -> None:
    assert "Example" in ok(*cmd)


def test_every_corruption_is_reported_by_vhd_check_and_refused_by_vhd_read(
        tmp_path: Path) -> None:
    from tests.storage.vhd import test_chain as tc

    for corrupt in (tc.corrupt_checksum, tc.corrupt_footer_copy_uuid, tc.corrupt_bat_past_eof,
                    tc.corrupt_overlap, tc.corrupt_truncate, tc.corrupt_parent_uuid,
                    tc.corrupt_cycle):
        d = tmp_path / corrupt.__name__
        d.mkdir()
        base = d / "base.vhd"
        ok("vhd", "create", base, "--size", "4M", "--block-size", "1M")
        for off in ("0", "1M", "2M", "3M"):
            (d / "x").write_bytes(b"x" * 10)
            ok("vhd", "write", base, "--offset", off, "--input", d / "x")
        corrupt(base, d)
        target = {"corrupt_parent_uuid": d / "child.vhd", "corrupt_cycle": d / "a.vhd"}.get(
            corrupt.__name__, base)
        res = runner.invoke(app, ["vhd", "check", str(target)])
        assert res.exit_code == 1 and res.output.strip(), corrupt.__name__
        assert "Traceback" not in res.output
        res = runner.invoke(app, ["vhd", "read", str(target), "--offset", "0", "--length", "1",
                                  "--output", str(d / "out")])
        assert isinstance(res.exception, StorageError), (corrupt.__name__, res.exception)
