"""`SR.scan` / `hvsim sr scan`: records and volumes brought back into step after a crash, a lost
record or a lost volume, for the file, lvm and lvhd SR types."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench._rel.crash import powered_by
from bench._rel.crashio import PowerCut, PowerPlan
from netsim.cli.app import app
from storage.sr.sr import META_FILE, SR

MiB = 1 << 20
KINDS = ["file", "lvm", "lvhd"]


def _new_sr(path: Path, kind: str) -> SR:
    cfg = {"size": str(48 * MiB)} if kind != "file" else None
    return SR.create(path, type_name=kind, name_label="scan",
                     **({"device_config": cfg} if cfg else {}))


def _meta_save_step(tmp: Path, kind: str) -> int:
    """The step at which `vdi_create` replaces sr.json (counted on a throwaway SR set up as
    the real one is: one VDI made before, so the VG is already open)."""
    sr = _new_sr(tmp / "probe", kind)
    sr.vdi_create("keep", 4 * MiB)
    plan = PowerPlan()
    with powered_by(plan):
        sr.vdi_create("probe", 4 * MiB)
    return next(i for i, what in enumerate(plan.log, 1) if what.startswith("replace sr.json"))


@pytest.mark.parametrize("kind", KINDS)
def test_scan_removes_the_empty_volume_a_crash_before_the_sr_json_save_left(
        tmp_path: Path, kind: str) -> None:
    cut = _meta_save_step(tmp_path, kind)
    sr = _new_sr(tmp_path / "sr", kind)
    keep = sr.vdi_create("keep", 4 * MiB)
    plan = PowerPlan(cut_at=cut)
    with pytest.raises(PowerCut), powered_by(plan):
        sr.vdi_create("lost", 4 * MiB)
    assert plan.log[-1].startswith("replace sr.json")

    sr = SR.open(tmp_path / "sr")
    orphans = set(sr.driver.list_volumes()) - {v.location for v in sr.vdis.values()}
    assert len(orphans) == 1, "the crash left no orphan volume: the test proves nothing"
    (orphan,) = orphans

    dry = sr.scan(dry_run=True)
    assert dry.removed_volumes == [orphan] and not dry.adopted and not dry.forgotten
    assert orphan in SR.open(tmp_path / "sr").driver.list_volumes()   # dry run: untouched

    rep = sr.scan()
    assert rep.removed_volumes == [orphan]
    sr = SR.open(tmp_path / "sr")
    assert sr.driver.list_volumes() == [keep.location]
    assert list(sr.vdis) == [keep.uuid]
    assert sr.scan().clean


def _write(sr: SR, uuid: str, offset: int, data: bytes) -> None:
    dev = sr.vdi_open(uuid)
    try:
        dev.write(offset, data)
        dev.flush()
    finally:
        dev.close()


def _read(sr: SR, uuid: str, offset: int, length: int) -> bytes:
    dev = sr.vdi_open(uuid, read_only=True)
    try:
        return dev.read(offset, length)
    finally:
        dev.close()


@pytest.mark.parametrize("kind", KINDS)
def test_scan_introduces_a_volume_with_data_that_no_record_names(tmp_path: Path,
                                                                   kind: str) -> None:
    """sr.json restored from before a VDI was made: its volume and data are introduced as a
    VDI (as XenServer's sr-scan does), not deleted."""
    sr = _new_sr(tmp_path / "sr", kind)
    sr.vdi_create("a", 4 * MiB)
    old = (tmp_path / "sr" / META_FILE).read_text()
    b = sr.vdi_create("b", 4 * MiB)
    _write(sr, b.uuid, MiB + 7, b"user data")
    (tmp_path / "sr" / META_FILE).write_text(old)

    sr = SR.open(tmp_path / "sr")
    assert b.uuid not in sr.vdis
    rep = sr.scan()
    assert rep.adopted == [b.uuid] and not rep.removed_volumes
    sr = SR.open(tmp_path / "sr")
    assert sr.vdis[b.uuid].location == b.location
    assert _read(sr, b.uuid, MiB + 7, 9) == b"user data"
    assert sr.scan().clean


@pytest.mark.parametrize("kind", KINDS)
def test_scan_reattaches_a_lost_snapshot_record_to_its_chain(tmp_path: Path, kind: str) -> None:
    sr = _new_sr(tmp_path / "sr", kind)
    a = sr.vdi_create("a", 4 * MiB)
    _write(sr, a.uuid, 0, b"before")
    snap = sr.vdi_snapshot(a.uuid)
    _write(sr, a.uuid, 0, b"after!")
    meta = json.loads((tmp_path / "sr" / META_FILE).read_text())
    rec = meta["vdis"].pop(snap.uuid)
    (tmp_path / "sr" / META_FILE).write_text(json.dumps(meta))

    sr = SR.open(tmp_path / "sr")
    rep = sr.scan()
    assert rep.adopted == [snap.uuid]
    sr = SR.open(tmp_path / "sr")
    got = sr.vdis[snap.uuid]
    assert got.parent == rec["parent"]
    if kind == "lvm":
        assert got.snapshot_of == a.uuid
    assert _read(sr, snap.uuid, 0, 6) == b"before"
    assert _read(sr, a.uuid, 0, 6) == b"after!"


@pytest.mark.parametrize("kind", KINDS)
def test_scan_forgets_a_leaf_whose_volume_is_gone_and_marks_a_needed_base(tmp_path: Path,
                                                                          kind: str) -> None:
    sr = _new_sr(tmp_path / "sr", kind)
    a = sr.vdi_create("a", 4 * MiB)
    b = sr.vdi_create("b", 4 * MiB)
    vbd = sr.vbd_create(b.uuid, "vm1")
    sr.driver.vdi_destroy(b)                          # the volume vanishes behind the SR
    base = None
    if kind != "lvm":
        sr.vdi_snapshot(a.uuid)
        base = sr.vdis[a.uuid].parent
        assert base is not None
        if kind == "file":
            os.unlink(tmp_path / "sr" / sr.vdis[base].location)
        else:
            sr.driver.vg.lvremove(sr.vdis[base].location)

    rep = SR.open(tmp_path / "sr").scan(dry_run=True)
    assert rep.forgotten == [b.uuid]
    assert SR.open(tmp_path / "sr").vdis[b.uuid]                # dry run: still recorded
    rep = SR.open(tmp_path / "sr").scan()
    assert rep.forgotten == [b.uuid]
    assert rep.marked_missing == ([base] if base else [])
    sr = SR.open(tmp_path / "sr")
    assert b.uuid not in sr.vdis and vbd.uuid not in sr.vbds
    if base:
        assert sr.vdis[base].missing


def test_cli_scan_reports_then_fixes(tmp_path: Path) -> None:
    runner = CliRunner()
    sr = _new_sr(tmp_path / "sr", "file")
    old = (tmp_path / "sr" / META_FILE).read_text()
    b = sr.vdi_create("b", 4 * MiB)
    _write(sr, b.uuid, 0, b"x")
    (tmp_path / "sr" / META_FILE).write_text(old)
    res = runner.invoke(app, ["sr", "scan", str(tmp_path / "sr"), "--dry-run", "--json"])
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout)["adopted"] == [b.uuid]
    res = runner.invoke(app, ["sr", "scan", str(tmp_path / "sr")])
    assert res.exit_code == 1 and "1 orphan volumes introduced" in res.stdout
    res = runner.invoke(app, ["sr", "scan", str(tmp_path / "sr")])
    assert res.exit_code == 0, res.output


def test_lvhd_scan_removes_an_lv_killed_before_its_vhd_was_written(tmp_path: Path) -> None:
    """A process killed between creating `VHD-<uuid>` and writing the VHD into it (seen with
    SIGKILLed snapshot/clone workers on a full VG) leaves an LV of zeros: provably empty, so
    scan removes it; an LV holding bytes that are not a VHD is still left alone."""
    import uuid as uuidlib

    sr = _new_sr(tmp_path / "sr", "lvhd")
    keep = sr.vdi_create("keep", 4 * MiB)
    zeros, junk = (f"VHD-{uuidlib.uuid4()}" for _ in range(2))
    vg = sr.driver.vg
    vg.lvcreate(zeros, 8 * MiB)
    vg.lvcreate(junk, 8 * MiB)
    dev = vg.open_lv(junk, write_lock=True)
    dev.write(MiB, b"not a vhd")
    dev.close()
    rep = sr.scan()
    assert rep.removed_volumes == [zeros]
    assert [u.split(":")[0] for u in rep.unreadable] == [junk]
    assert sorted(sr.driver.list_volumes()) == sorted([keep.location, junk])
