"""XenServer objects on a file SR: snapshot/clone with base copies, gc, VBDs, crash recovery."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from storage.errors import SrError
from storage.sr.sr import SR, SR_TYPES, VDI, SRDriver, driver_class, register_sr_type
from storage.vhd import chain

MiB = 2**20


def content(sr: SR, uuid: str) -> bytes:
    dev = sr.vdi_open(uuid, read_only=True)
    try:
        return dev.read(0, dev.size)
    finally:
        dev.close()


def write(sr: SR, uuid: str, offset: int, data: bytes) -> None:
    dev = sr.vdi_open(uuid)
    dev.write(offset, data)
    dev.close()


@pytest.fixture
def sr(tmp_path: Path) -> SR:
    return SR.create(tmp_path / "sr", type_name="file", name_label="local")


def test_snapshot_as_xenserver_does(sr: SR) -> None:
    v = sr.vdi_create("disk0", 4 * MiB)
    write(sr, v.uuid, 0, b"v1")
    snap = sr.vdi_snapshot(v.uuid)
    assert snap.uuid != v.uuid and snap.is_a_snapshot and snap.snapshot_of == v.uuid
    base = sr.vdis[v.parent]                              # type: ignore[index]
    assert base.hidden and base.read_only and sr.vdis[snap.uuid].parent == base.uuid
    assert sr.vdis[v.uuid].location == f"{v.uuid}.vhd"    # same UUID, same file name
    write(sr, v.uuid, 0, b"v2")
    assert content(sr, snap.uuid)[:2] == b"v1" and content(sr, v.uuid)[:2] == b"v2"
    assert sr.physical_utilisation(snap.uuid) < 64 * 1024  # the snapshot holds no data
    again = SR.open(sr.path)
    assert again.to_dict() == sr.to_dict()
    assert json.loads((sr.path / "sr.json").read_text())["vdis"][base.uuid]["hidden"] is True


def test_snapshot_is_o1_the_base_copy_is_the_same_inode(sr: SR) -> None:
    v = sr.vdi_create("big", 100 * 1024 * MiB)
    write(sr, v.uuid, 50 * 1024 * MiB, b"far away")
    inode = os.stat(sr.path / v.location).st_ino
    snap = sr.vdi_snapshot(v.uuid)
    base = sr.vdis[sr.vdis[v.uuid].parent]                 # type: ignore[index]
    assert os.stat(sr.path / base.location).st_ino == inode    # renamed, never copied
    for u in (v.uuid, snap.uuid):
        assert sr.physical_utilisation(u) < 2 * MiB           # two small BATs, no data
        dev = sr.vdi_open(u, read_only=True)
        assert dev.read(50 * 1024 * MiB, 8) == b"far away"
        dev.close()


def test_clone_is_writable_and_independent(sr: SR) -> None:
    v = sr.vdi_create("disk0", 4 * MiB)
    write(sr, v.uuid, 100, b"shared")
    c = sr.vdi_clone(v.uuid)
    assert not c.is_a_snapshot
    write(sr, c.uuid, 100, b"CLONED")
    assert content(sr, v.uuid)[100:106] == b"shared"
    assert content(sr, c.uuid)[100:106] == b"CLONED"


def test_gc_leaf_coalesce_and_removal_of_unused_base(sr: SR) -> None:
    v = sr.vdi_create("disk0", 4 * MiB)
    write(sr, v.uuid, 0, b"a")
    s = sr.vdi_snapshot(v.uuid)
    write(sr, v.uuid, 2 * MiB, b"b")
    expected = content(sr, v.uuid)
    sr.vdi_destroy(s.uuid)
    report = sr.gc()
    assert len(report.coalesced) == 1
    assert [x.uuid for x in sr.vdis.values()] == [v.uuid] and sr.vdis[v.uuid].parent is None
    assert content(sr, v.uuid) == expected
    assert chain.chain_paths(sr.path / v.location) == [str(sr.path / v.location)]
    assert sorted(os.listdir(sr.path)) == sorted([v.location, "sr.json", ".sr.lock"])
    # A base copy whose children are all gone is removed.
    s2 = sr.vdi_snapshot(v.uuid)
    c2 = sr.vdi_clone(v.uuid)
    for x in (s2, c2):
        sr.vdi_destroy(x.uuid)
    sr.gc()
    assert list(sr.vdis) == [v.uuid] and content(sr, v.uuid) == expected


def test_gc_coalesces_hidden_chain_and_relinks(sr: SR) -> None:
    v = sr.vdi_create("disk0", 4 * MiB)
    write(sr, v.uuid, 0, b"1")
    s1 = sr.vdi_snapshot(v.uuid)
    write(sr, v.uuid, 512, b"2")
    s2 = sr.vdi_snapshot(v.uuid)                     # B1 <- {B2 <- {v, s2}, s1}
    write(sr, v.uuid, 1024, b"3")
    views = {u: content(sr, u) for u in (v.uuid, s2.uuid)}
    assert sr.chain_depth(v.uuid) == 3
    sr.vdi_destroy(s1.uuid)
    report = sr.gc()
    assert len(report.coalesced) == 1
    assert sr.chain_depth(v.uuid) == 2 and sr.chain_depth(s2.uuid) == 2
    assert {u: content(sr, u) for u in views} == views
    assert sum(1 for x in sr.vdis.values() if x.hidden) == 1


def test_gc_skips_attached_leaf(sr: SR) -> None:
    v = sr.vdi_create("disk0", MiB)
    s = sr.vdi_snapshot(v.uuid)
    sr.vdi_destroy(s.uuid)
    vbd = sr.vbd_create(v.uuid, "vm1")
    dev = sr.vbd_plug(vbd.uuid)
    assert sr.gc().skipped == [v.uuid]
    dev.write(0, b"live")
    sr.vbd_unplug(vbd.uuid)
    assert sr.gc().coalesced and content(sr, v.uuid)[:4] == b"live"


def test_vbd_rules(sr: SR) -> None:
    v = sr.vdi_create("disk0", MiB)
    a = sr.vbd_create(v.uuid, "vm1")
    b = sr.vbd_create(v.uuid, "vm2")
    sr.vbd_plug(a.uuid)
    with pytest.raises(SrError, match="not sharable"):
        sr.vbd_plug(b.uuid)
    with pytest.raises(SrError, match="attached"):
        sr.vdi_destroy(v.uuid)
    base = sr.vdis[sr.vdi_snapshot(v.uuid).parent]          # type: ignore[index]
    with pytest.raises(SrError, match="hidden"):
        sr.vbd_create(base.uuid, "vm3")
    sr.close()
    pbd = sr.pbd_create("host1")
    sr.pbd_plug(pbd.uuid)
    assert sr.pbds[pbd.uuid].currently_attached


def test_depth_limit_refuses_snapshot(sr: SR) -> None:
    from storage.sr.srtypes.file import FileSRDriver

    v = sr.vdi_create("d", MiB)
    sr.driver.max_depth = 3                                    # type: ignore[attr-defined]
    sr.vdi_snapshot(v.uuid)
    sr.vdi_snapshot(v.uuid)
    with pytest.raises(SrError, match="limit 3"):
        sr.vdi_snapshot(v.uuid)
    assert FileSRDriver.max_depth == 30


def test_interrupted_snapshot_is_finished_on_open(sr: SR, monkeypatch: pytest.MonkeyPatch) -> None:
    v = sr.vdi_create("d", MiB)
    write(sr, v.uuid, 0, b"data")
    real = os.rename
    calls = {"n": 0}

    def flaky(a: str, b: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("crash between the renames")
        real(a, b)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OSError):
        sr.vdi_snapshot(v.uuid)
    monkeypatch.setattr(os, "rename", real)
    again = SR.open(sr.path)
    assert again.pending is None and len(again.vdis) == 3
    assert content(again, v.uuid)[:4] == b"data"
    snap = next(x for x in again.vdis.values() if x.is_a_snapshot)
    assert content(again, snap.uuid)[:4] == b"data"


def test_interrupted_snapshot_before_rename_rolls_back(sr: SR,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    v = sr.vdi_create("d", MiB)

    def boom(a: str, b: str) -> None:
        raise OSError("crash before the renames")

    monkeypatch.setattr(os, "rename", boom)
    with pytest.raises(OSError):
        sr.vdi_snapshot(v.uuid)
    monkeypatch.undo()
    again = SR.open(sr.path)
    assert list(again.vdis) == [v.uuid] and sorted(os.listdir(sr.path)) == sorted(
        [v.location, "sr.json", ".sr.lock"])


def test_type_registry(tmp_path: Path) -> None:
    with pytest.raises(SrError, match=r"unknown SR type 'nope'.*file"):
        SR.create(tmp_path / "x", type_name="nope")

    @register_sr_type
    class MemDriver(SRDriver):
        type_name = "memtest"

        def vdi_create(self, vdi: VDI, size: int) -> None:
            vdi.location = "mem"

        def vdi_open(self, vdi, *, read_only):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        vdi_snapshot = vdi_destroy = vdi_resize = vdi_coalesce = physical_utilisation = \
            vdi_open  # type: ignore[assignment]

    try:
        s = SR.create(tmp_path / "m", type_name="memtest")
        assert s.vdi_create("x", 1).location == "mem" and driver_class("memtest") is MemDriver
    finally:
        del SR_TYPES["memtest"]


def test_two_handles_on_one_sr_never_save_stale_records(sr: SR) -> None:
    # Like a backend holding the SR open while the CLI works on it from another process.
    v = sr.vdi_create("d", MiB)
    w = sr.vdi_create("e", MiB)
    other = SR.open(sr.path)
    vbd = other.vbd_create(v.uuid, "vm1")
    dev = other.vbd_plug(vbd.uuid)
    snap = sr.vdi_snapshot(w.uuid)               # sr has not seen the VBD yet
    assert vbd.uuid in sr.vbds
    with pytest.raises(SrError, match="another process"):
        sr.vdi_snapshot(v.uuid)                  # would pull the leaf from under the backend
    dev.write(0, b"after")
    other.vbd_unplug(vbd.uuid)                   # `other` has not seen the snapshot yet
    final = SR.open(sr.path)
    assert snap.uuid in final.vdis and final.vdis[w.uuid].parent in final.vdis
    assert not final.vbds[vbd.uuid].currently_attached
    assert content(final, v.uuid)[:5] == b"after"


def test_snapshot_and_resize_of_a_plugged_vdi_continue_on_the_new_leaf(sr: SR) -> None:
    v = sr.vdi_create("d", MiB)
    vbd = sr.vbd_create(v.uuid, "vm1")
    dev = sr.vbd_plug(vbd.uuid)
    dev.write(0, b"before")
    snap = sr.vdi_snapshot(v.uuid)
    dev.write(0, b"AFTER!")                      # lands in the new leaf, not the base copy
    assert content(sr, snap.uuid)[:6] == b"before"
    assert dev.read(0, 6) == b"AFTER!"  # (a second open of a plugged leaf is refused: locked)
    new_size = sr.vdi_resize(v.uuid, 4 * MiB)
    assert dev.size == new_size
    dev.write(new_size - 3, b"end")
    sr.vbd_unplug(vbd.uuid)
    assert content(sr, v.uuid)[-3:] == b"end"
