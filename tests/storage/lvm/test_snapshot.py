"""COW snapshots: frozen view while the origin changes, overflow invalidation, merge back."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.devices.rawio import MemoryIO
from storage.lvm import SnapshotInvalidError, VolumeGroup, pvcreate
from storage.lvm.cow import SNAP_MAGIC, CowStore
from tests.storage.lvm.conftest import MiB, reopen

CHUNK = 64 << 10


def small_vg() -> VolumeGroup:
    io = MemoryIO(bytes(24 * MiB), name="pv0")
    pvcreate("pv0", size=24 * MiB, io=io, rng=random.Random(1))
    return VolumeGroup.create("vg0", [io], extent_size=MiB, rng=random.Random(2))


def test_snapshot_is_frozen_while_origin_is_written(vg: VolumeGroup, pv_files) -> None:
    vg.lvcreate("data", 8 * MiB)
    origin = vg.open_lv("data")
    before = random.Random(1).randbytes(8 * MiB)
    origin.write(0, before)
    vg.lvcreate("snap", 4 * MiB, snapshot_of="data")
    assert vg.meta.lv("snapshot0").segments[0].chunk_size == 128  # 64 KiB default
    origin = vg.open_lv("data")
    origin.write(100, b"new!" * 1000)
    origin.write(5 * MiB + 3, b"x" * (CHUNK + 7))  # spans chunk boundaries
    snap = vg.open_lv("snap")
    assert snap.size == 8 * MiB
    assert snap.read(0, 8 * MiB) == before
    assert origin.read(100, 4) == b"new!"
    g = reopen(vg, pv_files)  # the exception table is on disk
    assert g.open_lv("snap").read(0, 8 * MiB) == before
    valid, pct = g.snapshot_status("snap")
    assert valid and 0 < pct < 100
    g.close()


def test_writes_to_snapshot_leave_origin_alone(vg: VolumeGroup) -> None:
    vg.lvcreate("data", 4 * MiB)
    vg.open_lv("data").write(0, b"o" * MiB)
    vg.lvcreate("snap", 4 * MiB, snapshot_of="data")
    snap = vg.open_lv("snap")
    snap.write(10, b"SNAP")
    assert snap.read(8, 8) == b"ooSNAPoo"
    assert vg.open_lv("data").read(8, 8) == b"o" * 8


def test_full_store_invalidates_snapshot_and_says_so(vg: VolumeGroup, pv_files) -> None:
    vg.lvcreate("data", 40 * MiB)
    vg.lvcreate("snap", 4 * MiB, snapshot_of="data")  # 64 chunks: header + area + 62 data
    origin = vg.open_lv("data")
    origin.write(0, b"z" * (3 * MiB))  # 48 chunks: fits
    assert vg.snapshot_status("snap")[0]
    origin.write(3 * MiB, b"z" * (2 * MiB))  # overflows
    assert vg.snapshot_status("snap") == (False, 100.0)
    with pytest.raises(SnapshotInvalidError, match="vg0/snap is invalid"):
        vg.open_lv("snap").read(0, 10)
    origin.write(10 * MiB, b"still fine")  # the origin keeps working
    g = reopen(vg, pv_files)
    assert not g.snapshot_status("snap")[0]  # invalid flag persisted in the COW header
    with pytest.raises(SnapshotInvalidError):
        g.merge_snapshot("snap")
    g.lvremove("snap")
    assert g.lv_names() == ["data"]
    g.close()


def test_merge_returns_origin_to_the_snapshot_view_and_keeps_other_snapshots(
        vg: VolumeGroup) -> None:
    vg.lvcreate("data", 4 * MiB)
    base = random.Random(2).randbytes(4 * MiB)
    vg.open_lv("data").write(0, base)
    vg.lvcreate("s1", 4 * MiB, snapshot_of="data")
    origin = vg.open_lv("data")
    origin.write(MiB, b"after s1" * 100)
    after = origin.read(0, 4 * MiB)
    vg.lvcreate("s2", 4 * MiB, snapshot_of="data")
    vg.open_lv("s1").write(0, b"edited in s1")
    n = vg.merge_snapshot("s1")
    assert n >= 2
    merged = vg.open_lv("data").read(0, 4 * MiB)
    assert merged == b"edited in s1" + base[12:]
    assert vg.open_lv("s2").read(0, 4 * MiB) == after  # s2 still sees its moment
    assert "s1" not in vg.lv_names() and not vg.meta.has_lv("snapshot0")


def test_snapshot_rules(vg: VolumeGroup) -> None:
    vg.lvcreate("data", 4 * MiB)
    vg.lvcreate("snap", 4 * MiB, snapshot_of="data")
    with pytest.raises(Exception, match="snapshots of snapshots"):
        vg.lvcreate("snap2", 4 * MiB, snapshot_of="snap")
    with pytest.raises(Exception, match="has snapshots"):
        vg.lvremove("data")
    with pytest.raises(Exception, match="cannot resize a snapshot origin"):
        vg.lvextend("data", 8 * MiB)
    vg.lvextend("snap", 8 * MiB)  # a bigger COW store is fine
    vg.lvrename("data", "data2")
    assert vg.meta.lv("snapshot0").segments[0].origin == "data2"
    vg.lvrename("snap", "snapb")
    assert vg.open_lv("snapb").read(0, 4) == bytes(4)
    vg.lvremove("data2", force=True)
    assert vg.lv_names() == []


def test_store_uses_dm_snapshot_layout() -> None:
    raw = MemoryIO(bytes(MiB))
    store = CowStore.initialise(raw, 128, name="s")
    assert int.from_bytes(raw.pread(0, 4), "little") == SNAP_MAGIC
    assert raw.pread(4, 12) == (1).to_bytes(4, "little") + (1).to_bytes(4, "little") + \
        (128).to_bytes(4, "little")
    assert store.add(7, b"q" * CHUNK) == 2  # first data chunk follows area 0 (chunk 1)
    assert raw.pread(CHUNK, 16) == (7).to_bytes(8, "little") + (2).to_bytes(8, "little")
    assert CowStore.load(raw, 128, name="s").exceptions == {7: 2}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4 * MiB - 1), st.integers(1, 200_000)),
                min_size=1, max_size=20))
def test_snapshot_matches_a_model_under_random_writes(ops) -> None:
    g = small_vg()
    g.lvcreate("data", 4 * MiB)
    model_origin = bytearray(random.Random(0).randbytes(4 * MiB))
    g.open_lv("data").write(0, bytes(model_origin))
    g.lvcreate("snap", 8 * MiB, snapshot_of="data", chunk_size=16 << 10)
    model_snap = bytearray(model_origin)
    origin, snap = g.open_lv("data"), g.open_lv("snap")
    for to_snap, off, n in ops:
        n = min(n, 4 * MiB - off)
        data = random.Random(off).randbytes(n)
        (snap if to_snap else origin).write(off, data)
        (model_snap if to_snap else model_origin)[off:off + n] = data
    assert origin.read(0, 4 * MiB) == model_origin
    assert snap.read(0, 4 * MiB) == model_snap
    g.close()


def test_device_opened_before_the_snapshot_still_copies_on_write(vg: VolumeGroup) -> None:
    vg.lvcreate("data", 4 * MiB)
    origin = vg.open_lv("data")  # e.g. a VDI attached to a running guest
    origin.write(0, b"before")
    vg.lvcreate("snap", 4 * MiB, snapshot_of="data")
    origin.write(0, b"after!")
    assert vg.open_lv("snap").read(0, 6) == b"before"
    vg.lvremove("snap")
    origin.write(0, b"again!")  # no snapshot left: plain writes
    assert origin.read(0, 6) == b"again!"


def test_snapshot_read_by_another_handle_while_the_origin_is_written(
        vg: VolumeGroup, pv_files) -> None:
    """A process reading a snapshot (an export) while another writes its origin (a guest)
    sees the frozen view: chunks the writer copies out after the reader loaded the exception
    table are read from the copy, across a metadata-area boundary, and an overflow that
    invalidates the snapshot there fails the read here."""
    chunk = 4096                      # 256 exceptions per metadata area
    vg.lvcreate("data", 4 * MiB)
    origin = vg.open_lv("data")
    rng = random.Random(3)
    before = rng.randbytes(4 * MiB)
    origin.write(0, before)
    vg.lvcreate("snap", 2 * MiB, snapshot_of="data", chunk_size=chunk)
    origin = vg.open_lv("data")
    origin.write(0, b"early")         # copied out before the reader opens: in its table
    other = VolumeGroup.open("vg0", pv_files)   # what another process would hold
    try:
        snap = other.open_lv("snap")
        assert snap.read(0, 4 * MiB) == before
        for i in range(300):          # crosses into the second metadata area
            off = rng.randrange(4 * MiB // chunk) * chunk
            origin.write(off, rng.randbytes(chunk))
            got = snap.read(off, chunk)
            assert got == before[off:off + chunk], f"write {i} at {off} leaked"
        assert snap.read(0, 4 * MiB) == before
        with pytest.raises(SnapshotInvalidError):
            for off in range(0, 4 * MiB, chunk):  # every chunk: more than the store holds
                origin.write(off, b"x" * chunk)   # (4 MiB after rounding to extents, less
                snap.read(off, chunk)             # the header and metadata areas)
    finally:
        other.close()
