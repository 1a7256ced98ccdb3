"""The `lvm` and `lvhd` SR types: VDIs on LVs, snapshots, clones, resize, gc, inflate/deflate."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from storage.devices.blockdev import BlockDevice
from storage.errors import SrError, StorageError
from storage.lvm import VolumeGroup
from storage.sr.sr import SR
from storage.sr.srtypes.lvhd import full_vhd_size

MiB = 1 << 20


def make_sr(tmp_path: Path, kind: str, size: str = "256M") -> SR:
    return SR.create(tmp_path / kind, type_name=kind, device_config={"size": size})


def write(sr: SR, uuid: str, off: int, data: bytes) -> None:
    dev = sr.vdi_open(uuid)
    dev.write(off, data)
    dev.close()


def read(sr: SR, uuid: str, off: int, n: int) -> bytes:
    dev = sr.vdi_open(uuid, read_only=True)
    try:
        return dev.read(off, n)
    finally:
        dev.close()


@pytest.mark.parametrize("kind", ["lvm", "lvhd"])
def test_vdis_live_in_the_xenserver_named_vg(tmp_path: Path, kind: str) -> None:
    sr = make_sr(tmp_path, kind)
    v = sr.vdi_create("disk0", 10 * MiB)
    assert v.virtual_size >= 10 * MiB
    prefix = "LV-" if kind == "lvm" else "VHD-"
    assert v.location == f"{prefix}{v.uuid}"
    cfg = json.loads((sr.path / "lvm.json").read_text())
    assert cfg == {"vg": f"VG_XenStorage-{sr.uuid}", "devices": ["pv0.img"]}
    sr.close()
    g = VolumeGroup.open(f"VG_XenStorage-{sr.uuid}", [sr.path / "pv0.img"])
    assert g.lv_names() == [v.location]
    g.close()


@pytest.mark.parametrize("kind", ["lvm", "lvhd"])
def test_snapshot_is_frozen_and_clone_is_independent(tmp_path: Path, kind: str) -> None:
    sr = make_sr(tmp_path, kind)
    v = sr.vdi_create("disk0", 12 * MiB)
    base = random.Random(1).randbytes(12 * MiB)
    write(sr, v.uuid, 0, base)
    snap = sr.vdi_snapshot(v.uuid)
    clone = sr.vdi_clone(v.uuid)
    write(sr, v.uuid, 5 * MiB + 7, b"after the snapshot")
    write(sr, clone.uuid, 100, b"clone's own")
    sr.close()
    sr = SR.open(sr.path)
    assert read(sr, snap.uuid, 0, 12 * MiB) == base
    assert read(sr, v.uuid, 5 * MiB + 7, 18) == b"after the snapshot"
    assert read(sr, clone.uuid, 100, 11) == b"clone's own"
    assert read(sr, v.uuid, 100, 11) == base[100:111]
    assert sr.vdis[snap.uuid].is_a_snapshot and sr.vdis[snap.uuid].snapshot_of == v.uuid


def test_vbd_plug_serves_an_lvm_vdi_like_any_other(tmp_path: Path) -> None:
    for kind in ("lvm", "lvhd"):
        sr = make_sr(tmp_path, kind)
        v = sr.vdi_create("disk0", 8 * MiB)
        vbd = sr.vbd_create(v.uuid, "vm1")
        dev = sr.vbd_plug(vbd.uuid)
        assert isinstance(dev, BlockDevice) and dev.size == v.virtual_size
        dev.write(4096, b"guest data")
        sr.vbd_unplug(vbd.uuid)
        ro = sr.vbd_create(v.uuid, "vm2", mode="RO")
        dev = sr.vbd_plug(ro.uuid)
        assert dev.read_only and dev.read(4096, 10) == b"guest data"
        with pytest.raises(StorageError):
            dev.write(0, b"x")
        sr.vbd_unplug(ro.uuid)


def test_lvm_resize_and_snapshot_rules(tmp_path: Path) -> None:
    sr = make_sr(tmp_path, "lvm")
    v = sr.vdi_create("disk0", 10 * MiB)  # 3 extents
    assert v.virtual_size == 12 * MiB
    assert sr.vdi_resize(v.uuid, 20 * MiB) == 20 * MiB
    write(sr, v.uuid, 18 * MiB, b"tail")
    with pytest.raises(SrError, match="would destroy data"):
        sr.vdi_resize(v.uuid, 8 * MiB)
    snap = sr.vdi_snapshot(v.uuid)
    with pytest.raises(SrError, match="LVM cannot snapshot a snapshot"):
        sr.vdi_snapshot(snap.uuid)
    with pytest.raises(SrError, match="has LVM snapshots"):
        sr.vdi_destroy(v.uuid)
    with pytest.raises(SrError, match="snapshot origin"):
        sr.vdi_resize(v.uuid, 40 * MiB)
    # the COW store holds a copy of every chunk: a full overwrite cannot invalidate it
    write(sr, v.uuid, 0, b"\x77" * (20 * MiB))
    assert read(sr, snap.uuid, 18 * MiB, 4) == b"tail"
    sr.vdi_destroy(snap.uuid)
    sr.vdi_destroy(v.uuid)
    assert sr.vdis == {}
    assert sr.driver.vg.lv_names() == []  # type: ignore[attr-defined]


def lv_size(sr: SR, uuid: str) -> int:
    return sr.physical_utilisation(uuid)


def test_lvhd_inflates_leaves_and_deflates_base_copies_keeping_data(tmp_path: Path) -> None:
    sr = make_sr(tmp_path, "lvhd")
    v = sr.vdi_create("disk0", 40 * MiB)
    full = full_vhd_size(v.virtual_size)
    assert lv_size(sr, v.uuid) >= full  # inflated at creation
    data = random.Random(2).randbytes(3 * MiB)
    write(sr, v.uuid, 9 * MiB, data)
    snap = sr.vdi_snapshot(v.uuid)
    base = sr.vdis[v.uuid].parent
    assert base is not None and sr.vdis[base].hidden
    assert lv_size(sr, base) == 8 * MiB  # deflated: 2 blocks of 2 MiB + metadata
    assert lv_size(sr, snap.uuid) == 4 * MiB  # an unused snapshot is deflated
    assert lv_size(sr, v.uuid) >= full  # the VDI's new leaf is inflated for writing
    assert read(sr, snap.uuid, 9 * MiB, len(data)) == data
    dev = sr.vdi_open(snap.uuid)  # writing a snapshot inflates it ...
    assert lv_size(sr, snap.uuid) >= full
    dev.write(30 * MiB, b"written into the snapshot")
    dev.close()  # ... and closing it deflates it again
    assert lv_size(sr, snap.uuid) == 4 * MiB
    assert read(sr, snap.uuid, 30 * MiB, 25) == b"written into the snapshot"
    assert read(sr, snap.uuid, 9 * MiB, len(data)) == data
    assert read(sr, v.uuid, 9 * MiB, len(data)) == data
    assert read(sr, v.uuid, 30 * MiB, 25) == bytes(25)


def test_lvhd_gc_coalesces_and_frees_lvs(tmp_path: Path) -> None:
    sr = make_sr(tmp_path, "lvhd")
    v = sr.vdi_create("disk0", 16 * MiB)
    write(sr, v.uuid, 0, b"A" * MiB)
    s1 = sr.vdi_snapshot(v.uuid)
    write(sr, v.uuid, MiB, b"B" * MiB)
    s2 = sr.vdi_snapshot(v.uuid)
    write(sr, v.uuid, 2 * MiB, b"C" * MiB)
    sr.vdi_destroy(s1.uuid)
    sr.vdi_destroy(s2.uuid)
    report = sr.gc()
    assert report.coalesced and not [u for u, x in sr.vdis.items() if x.hidden]
    assert sr.chain_depth(v.uuid) == 1
    assert read(sr, v.uuid, 0, 3 * MiB) == b"A" * MiB + b"B" * MiB + b"C" * MiB
    assert sr.driver.vg.lv_names() == [v.location]  # type: ignore[attr-defined]
    write(sr, v.uuid, 3 * MiB, b"D")  # the merged leaf is writable
    assert read(sr, v.uuid, 3 * MiB, 1) == b"D"


def test_lvhd_gc_leaves_a_chain_alone_while_another_process_writes_its_leaf(
        tmp_path: Path) -> None:
    """A coalesce rewrites the leaf's header (relink) or swaps its LV: with the leaf open for
    writing by another SR handle (its own open file descriptions: another process to the LV
    write lock) gc must skip it, then coalesce once the writer has closed."""
    sr = make_sr(tmp_path, "lvhd")
    v = sr.vdi_create("disk0", 16 * MiB)
    write(sr, v.uuid, 0, b"A" * MiB)
    s1 = sr.vdi_snapshot(v.uuid)
    write(sr, v.uuid, MiB, b"B" * MiB)
    s2 = sr.vdi_snapshot(v.uuid)
    sr.vdi_destroy(s1.uuid)
    other = SR.open(sr.path)
    dev = other.vdi_open(v.uuid)                      # the writer elsewhere
    report = sr.gc()
    assert not report.coalesced and report.skipped      # the hidden parent of v and s2
    dev.write(2 * MiB, b"C" * MiB)                    # its writes still land
    dev.close()
    other.close()
    assert sr.gc().coalesced
    assert read(sr, v.uuid, 0, 3 * MiB) == b"A" * MiB + b"B" * MiB + b"C" * MiB
    assert read(sr, s2.uuid, 0, 2 * MiB) == b"A" * MiB + b"B" * MiB


def test_lvhd_resize_keeps_data(tmp_path: Path) -> None:
    sr = make_sr(tmp_path, "lvhd")
    v = sr.vdi_create("disk0", 10 * MiB)
    write(sr, v.uuid, 9 * MiB, b"end")
    new = sr.vdi_resize(v.uuid, 50 * MiB)
    assert new >= 50 * MiB and lv_size(sr, v.uuid) >= full_vhd_size(new)
    write(sr, v.uuid, 49 * MiB, b"far")
    assert read(sr, v.uuid, 9 * MiB, 3) == b"end" and read(sr, v.uuid, 49 * MiB, 3) == b"far"
    with pytest.raises(StorageError, match="would lose data"):
        sr.vdi_resize(v.uuid, 20 * MiB)


def test_sr_needs_a_size_or_devices(tmp_path: Path) -> None:
    with pytest.raises(SrError, match="needs a size"):
        SR.create(tmp_path / "x", type_name="lvhd")


def test_sr_on_existing_device_files(tmp_path: Path) -> None:
    devs = []
    for i in range(2):
        p = tmp_path / f"disk{i}.img"
        with open(p, "wb") as f:
            f.truncate(64 * MiB)
        devs.append(str(p))
    sr = SR.create(tmp_path / "sr", type_name="lvm", device_config={"device": ",".join(devs)})
    v = sr.vdi_create("big", 100 * MiB)  # spans both PVs
    write(sr, v.uuid, 99 * MiB, b"spans")
    sr.close()
    sr = SR.open(tmp_path / "sr")
    assert read(sr, v.uuid, 99 * MiB, 5) == b"spans"


class Boom(Exception):
    pass


def test_lvhd_snapshot_interrupted_after_the_rename_is_finished_on_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sr = make_sr(tmp_path, "lvhd")
    v = sr.vdi_create("disk0", 8 * MiB)
    write(sr, v.uuid, 0, b"keep me")
    from storage.sr.srtypes import lvhd

    real = lvhd.LvhdSRDriver._create_vhd
    calls = {"n": 0}

    def flaky(self, *a, **kw):  # the machine dies while creating the second child
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom
        return real(self, *a, **kw)

    monkeypatch.setattr(lvhd.LvhdSRDriver, "_create_vhd", flaky)
    with pytest.raises(Boom):
        sr.vdi_snapshot(v.uuid)
    monkeypatch.setattr(lvhd.LvhdSRDriver, "_create_vhd", real)
    sr2 = SR.open(sr.path)
    assert sr2.pending is None
    snaps = [x for x in sr2.vdis.values() if x.is_a_snapshot]
    assert len(snaps) == 1 and sr2.vdis[v.uuid].parent is not None
    assert read(sr2, v.uuid, 0, 7) == b"keep me"
    assert read(sr2, snaps[0].uuid, 0, 7) == b"keep me"


def test_lvhd_coalesce_interrupted_is_finished_on_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sr = make_sr(tmp_path, "lvhd")
    v = sr.vdi_create("disk0", 8 * MiB)
    write(sr, v.uuid, 0, b"1" * 4096)
    s = sr.vdi_snapshot(v.uuid)
    write(sr, v.uuid, 4096, b"2" * 4096)
    sr.vdi_destroy(s.uuid)
    from storage.sr.srtypes import lvhd

    def die(self, *a, **kw):
        raise Boom

    monkeypatch.setattr(lvhd.LvhdSRDriver, "_finish_coalesce", die)
    with pytest.raises(Boom):
        sr.gc()
    monkeypatch.undo()
    sr2 = SR.open(sr.path)
    assert sr2.pending is None and sr2.chain_depth(v.uuid) == 1
    assert read(sr2, v.uuid, 0, 8192) == b"1" * 4096 + b"2" * 4096
    assert sr2.driver.vg.lv_names() == [v.location]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["lvm", "lvhd"])
def test_snapshot_and_gc_while_a_vbd_is_plugged(tmp_path: Path, kind: str) -> None:
    sr = make_sr(tmp_path, kind)
    v = sr.vdi_create("disk0", 8 * MiB)
    vbd = sr.vbd_create(v.uuid, "vm1")
    dev = sr.vbd_plug(vbd.uuid)
    dev.write(0, b"one")
    s1 = sr.vdi_snapshot(v.uuid)
    dev.write(0, b"two")  # the guest keeps writing through the same device
    if kind == "lvhd":
        s2 = sr.vdi_snapshot(v.uuid)
        dev.write(0, b"333")
        sr.vdi_destroy(s1.uuid)
        sr.gc()  # leaves what the plugged leaf reads through alone, or reopens it
        assert read(sr, s2.uuid, 0, 3) == b"two"
    else:
        assert read(sr, s1.uuid, 0, 3) == b"one"
    dev.write(3, b"!")
    assert dev.read(0, 4) == (b"333!" if kind == "lvhd" else b"two!")
    sr.vbd_unplug(vbd.uuid)
    assert read(sr, v.uuid, 0, 4) == dev_expect(kind)
    if kind == "lvm":
        assert read(sr, s1.uuid, 0, 3) == b"one"


def dev_expect(kind: str) -> bytes:
    return b"333!" if kind == "lvhd" else b"two!"


@pytest.mark.parametrize("kind", ["lvm", "lvhd"])
def test_two_sr_objects_on_one_sr_see_each_others_volumes(tmp_path: Path, kind: str) -> None:
    a = make_sr(tmp_path, kind)
    b = SR.open(a.path)  # as another process would
    v1 = a.vdi_create("one", 8 * MiB)
    write(a, v1.uuid, 0, b"written by a")
    v2 = b.vdi_create("two", 8 * MiB)  # b's VG handle refreshes instead of conflicting
    s = a.vdi_snapshot(v2.uuid)
    assert read(b, v1.uuid, 0, 12) == b"written by a"
    assert read(b, s.uuid, 0, 4) == bytes(4)
    b.vdi_destroy(s.uuid)
    with a.locked():  # records as on disk
        assert sorted(a.driver.vg.lv_names()) == sorted(  # type: ignore[attr-defined]
            x.location for x in a.vdis.values())


def _open_fds_to(path: Path) -> int:
    import os

    fd_dir = Path("/proc/self/fd")
    n = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == str(path):
                n += 1
        except OSError:
            continue
    return n


@pytest.mark.parametrize("kind", ["lvm", "lvhd"])
def test_closing_an_sr_releases_its_volume_group_files(tmp_path: Path, kind: str) -> None:
    # An SR object that is closed must not keep its PV files open: a long-running process that
    # opens SRs over and over (a host, a test harness) would otherwise pin every one of them.
    sr = make_sr(tmp_path, kind, size="64M")
    v = sr.vdi_create("disk0", 4 * MiB)
    write(sr, v.uuid, 0, b"x" * 4096)
    pv = (sr.path / "pv0.img").resolve()
    assert _open_fds_to(pv) > 0
    sr.close()
    assert _open_fds_to(pv) == 0
    reopened = SR.open(sr.path)  # a closed SR's storage opens again as usual
    assert read(reopened, v.uuid, 0, 4096) == b"x" * 4096
    reopened.close()
    assert _open_fds_to(pv) == 0
