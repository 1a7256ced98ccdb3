"""Volume groups on PV files: create, open, change, commit, and LVs as block devices."""
from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest

from storage.devices.blockdev import BlockDevice
from storage.devices.imagelock import LockMode
from storage.devices.rawio import FileIO, MemoryIO, RawIO
from storage.errors import LvmError, StorageError
from storage.lvm import VolumeGroup, pvcreate, read_pv
from storage.lvm.alloc import check_consistency, free_extents
from storage.lvm.ondisk import MDA_HEADER_SIZE, unpack_mda_header
from storage.lvm.vg import read_mda_text
from tests.storage.lvm.conftest import MiB, reopen


def test_vgcreate_lays_out_extents_after_both_metadata_areas(vg: VolumeGroup) -> None:
    s = vg.summary()
    assert (s.pv_count, s.lv_count, s.extent_size) == (2, 0, 4 * MiB)
    # 64 MiB - 1 MiB (label + first metadata area) - 1 MiB (second area) = 15.5 extents
    assert [p.pe_count for p in vg.meta.pvs] == [15, 15]
    assert s.size == s.free == 30 * 4 * MiB


def test_every_change_increments_seqno_in_every_copy(vg: VolumeGroup, pv_files) -> None:
    seqs = [vg.meta.seqno]
    vg.lvcreate("a", 10 * MiB)
    seqs.append(vg.meta.seqno)
    vg.lvextend("a", 20 * MiB)
    seqs.append(vg.meta.seqno)
    vg.lvrename("a", "b")
    seqs.append(vg.meta.seqno)
    vg.lvremove("b")
    seqs.append(vg.meta.seqno)
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    for dev in vg.devices.values():
        assert len(dev.mdas) == 2
        for h in dev.mdas:
            got = read_mda_text(dev, h)
            assert got is not None and got[0].seqno == seqs[-1]
    g = reopen(vg, pv_files)
    assert g.meta.seqno == seqs[-1] and g.lv_names() == []
    g.close()


def test_lv_data_survives_reopen_and_extend(vg: VolumeGroup, pv_files) -> None:
    vg.lvcreate("a", 10 * MiB)
    vg.lvcreate("b", 4 * MiB)  # blocks contiguous growth of a
    dev = vg.open_lv("a")
    assert isinstance(dev, BlockDevice)
    payload = os.urandom(12 * MiB)[: 12 * MiB]
    dev.write(0, payload)
    vg.lvextend("a", 30 * MiB)
    assert len(vg.meta.lv("a").segments) == 2
    g = reopen(vg, pv_files)
    dev = g.open_lv("a")
    assert dev.size == 32 * MiB
    assert dev.read(0, len(payload)) == payload
    assert dev.read(len(payload), 4 * MiB) == bytes(4 * MiB)  # new extents read zeros
    g.close()


def test_contiguous_extension_merges_into_the_last_segment(vg: VolumeGroup) -> None:
    vg.lvcreate("a", 8 * MiB)
    vg.lvextend("a", 16 * MiB)
    assert len(vg.meta.lv("a").segments) == 1
    assert vg.meta.lv("a").segments[0].extent_count == 4


def test_allocation_spans_pvs_when_no_single_area_fits(vg: VolumeGroup) -> None:
    vg.lvcreate("big", 100 * MiB)  # 25 extents > 15 per PV
    segs = vg.meta.lv("big").segments
    assert {s.stripes[0][0] for s in segs} == {"pv0", "pv1"}
    assert free_extents(vg.meta) == 5
    with pytest.raises(LvmError, match="insufficient free space: 6 extents needed, only 5"):
        vg.lvcreate("more", 24 * MiB)
    check_consistency(vg.meta)


def test_reduce_refuses_to_cut_data_unless_forced(vg: VolumeGroup) -> None:
    vg.lvcreate("a", 16 * MiB)
    dev = vg.open_lv("a")
    dev.write(13 * MiB, b"precious")
    with pytest.raises(LvmError, match="would destroy data at byte 13631488"):
        vg.lvreduce("a", 8 * MiB)
    with pytest.raises(LvmError, match="not smaller than the current 4 extents"):
        vg.lvreduce("a", 12 * MiB + 1)  # rounds up to 4 extents, as LVM2 rounds sizes up
    assert vg.lv_size("a") == 16 * MiB
    vg.lvreduce("a", 12 * MiB, force=True)
    assert vg.lv_size("a") == 12 * MiB
    vg.lvextend("a", 16 * MiB)
    assert vg.open_lv("a").read(13 * MiB, 8) == bytes(8)  # cut data is gone, not resurrected


def test_removed_lv_data_never_leaks_into_a_new_lv(vg: VolumeGroup) -> None:
    vg.lvcreate("secret", 8 * MiB)
    vg.open_lv("secret").write(0, b"\xaa" * MiB)
    vg.lvremove("secret")
    vg.lvcreate("fresh", 8 * MiB)
    assert vg.open_lv("fresh").read(0, MiB) == bytes(MiB)


def test_lv_bounds_and_names_are_checked(vg: VolumeGroup) -> None:
    vg.lvcreate("a", 4 * MiB)
    dev = vg.open_lv("a")
    with pytest.raises(LvmError, match="beyond the LV"):
        dev.read(4 * MiB - 1, 2)
    with pytest.raises(LvmError, match="beyond the LV"):
        dev.write(-1, b"x")
    with pytest.raises(LvmError, match="already exists"):
        vg.lvcreate("a", MiB)
    with pytest.raises(LvmError, match="invalid LV name"):
        vg.lvcreate("snapshot3", MiB)
    with pytest.raises(LvmError, match="no logical volume 'zz'"):
        vg.open_lv("zz")


def test_read_only_lv_refuses_writes(vg: VolumeGroup) -> None:
    vg.lvcreate("ro", 4 * MiB, read_only=True)
    dev = vg.open_lv("ro")
    assert dev.read_only
    with pytest.raises(LvmError, match="read-only"):
        dev.write(0, b"x")


def test_discard_zeroes(vg: VolumeGroup) -> None:
    vg.lvcreate("a", 8 * MiB)
    dev = vg.open_lv("a")
    dev.write(0, b"\x11" * (2 * MiB))
    dev.discard(4096, MiB)
    assert dev.read(0, 4096) == b"\x11" * 4096
    assert dev.read(4096, MiB) == bytes(MiB)
    assert dev.read(4096 + MiB, 16) == b"\x11" * 16


def test_raw_io_view_and_resizing_through_truncate(vg: VolumeGroup) -> None:
    vg.lvcreate("vhd", 4 * MiB)
    rio = vg.raw_io("vhd", resizable=True)
    assert isinstance(rio, RawIO)
    assert rio.size() == 4 * MiB
    rio.pwrite(4 * MiB - 2, b"abcd")  # grows the LV by one extent
    assert rio.size() == 8 * MiB and rio.pread(4 * MiB - 2, 4) == b"abcd"
    assert rio.pread(8 * MiB - 2, 100) == bytes(2)  # short read at the end
    fixed = vg.raw_io("vhd")
    with pytest.raises(LvmError, match="past the end"):
        fixed.pwrite(8 * MiB, b"x")


def test_newest_valid_copy_wins_when_one_is_damaged(vg: VolumeGroup, pv_files) -> None:
    vg.lvcreate("a", 4 * MiB)
    seq = vg.meta.seqno
    dev = vg.devices["pv0"]
    h = dev.mdas[0]
    loc = h.locns[0]
    dev.io.pwrite(h.start + loc.offset + 10, b"#garbage#")  # text checksum now fails
    g = reopen(vg, pv_files)
    assert g.meta.seqno == seq and g.lv_names() == ["a"]
    g.lvcreate("b", 4 * MiB)  # commit repairs the damaged copy
    pv = read_pv(FileIO(str(pv_files[0]), writable=False, lock=LockMode.NONE), str(pv_files[0]))
    assert read_mda_text(pv, pv.mdas[0])[0].seqno == seq + 1  # type: ignore[index]
    pv.io.close()
    g.close()


def test_missing_pv_and_unknown_vg_are_clear_errors(vg: VolumeGroup, pv_files) -> None:
    vg.close()
    with pytest.raises(LvmError, match=r"physical volume .* is missing"):
        VolumeGroup.open("vg0", [pv_files[0]])
    with pytest.raises(LvmError, match="volume group 'nope' not found"):
        VolumeGroup.open("nope", pv_files)


def test_pv_in_use_and_bad_pv_are_refused(vg: VolumeGroup, pv_files, tmp_path: Path) -> None:
    vg.close()
    with pytest.raises(LvmError, match="already belongs to VG vg0"):
        VolumeGroup.create("vg1", [pv_files[1]])
    junk = tmp_path / "junk.img"
    junk.write_bytes(bytes(4 << 20))
    with pytest.raises(LvmError, match="not a physical volume"):
        VolumeGroup.create("vg1", [junk])
    with pytest.raises(StorageError, match="already exists"):
        pvcreate(pv_files[0], size=64 * MiB)
    with pytest.raises(LvmError, match="too small"):
        pvcreate(tmp_path / "tiny.img", size=MiB)


def test_metadata_buffer_wraps_around_and_still_opens() -> None:
    io = MemoryIO(bytes(32 * MiB), name="pv0")
    pvcreate("pv0", size=32 * MiB, io=io, rng=random.Random(4))
    g = VolumeGroup.create("vgw", [io], rng=random.Random(5))
    g.lvcreate("keep", 4 * MiB)
    offsets = []
    for _ in range(450):  # 900 commits of ~1.3 KB: more than one lap of the 1 MiB area
        g.lvcreate("x", 4 * MiB)
        g.lvremove("x")
        offsets.append(g.devices["pv0"].mdas[0].locns[0].offset)
    assert any(b < a for a, b in itertools.pairwise(offsets))  # it went round
    for m in g.devices["pv0"].label.metadata_areas:
        h = unpack_mda_header(io.pread(m.offset, MDA_HEADER_SIZE))
        assert h.start == m.offset and h.size == m.size
        assert MDA_HEADER_SIZE <= h.locns[0].offset < h.size
    again = VolumeGroup.open_ios("vgw", [io])
    assert again.meta.seqno == g.meta.seqno and again.lv_names() == ["keep"]


def test_pv_can_be_an_existing_file(tmp_path: Path) -> None:
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.truncate(32 * MiB)
    pvcreate(p, metadata_copies=1, rng=random.Random(1))
    g = VolumeGroup.create("vgx", [p], extent_size=MiB)
    assert g.meta.pvs[0].pe_count == 31
    g.close()


def test_open_device_follows_resize_and_rename_and_fails_after_remove(vg: VolumeGroup) -> None:
    vg.lvcreate("a", 4 * MiB)
    dev = vg.open_lv("a")
    vg.lvextend("a", 8 * MiB)
    assert dev.size == 8 * MiB
    dev.write(7 * MiB, b"tail")
    vg.lvrename("a", "b")
    assert dev.read(7 * MiB, 4) == b"tail" and dev.name == "vg0/b"
    vg.lvremove("b")
    with pytest.raises(LvmError, match="no longer exists"):
        dev.read(0, 1)


def test_a_second_handle_cannot_commit_over_newer_metadata(vg: VolumeGroup, pv_files) -> None:
    other = VolumeGroup.open("vg0", pv_files)
    vg.lvcreate("a", 8 * MiB)  # committed by the first handle
    with pytest.raises(LvmError, match="changed by another process"):
        other.lvcreate("b", 8 * MiB)  # would reuse a's extents: refused
    other.close()
    fresh = VolumeGroup.open("vg0", pv_files)
    fresh.lvcreate("b", 8 * MiB)
    check_consistency(fresh.meta)
    assert fresh.lv_names() == ["a", "b"]
    fresh.close()


def test_vgcfgrestore_undoes_an_lvremove(vg: VolumeGroup, pv_files, tmp_path: Path) -> None:
    vg.lvcreate("precious", 8 * MiB)
    vg.open_lv("precious").write(0, b"do not lose me")
    backup = vg.backup_text("before the accident")
    vg.lvremove("precious")
    seq = vg.meta.seqno
    vg.restore(backup, test=True)
    assert vg.lv_names() == [] and vg.meta.seqno == seq  # --test changes nothing
    vg.restore(backup)
    assert vg.meta.seqno == seq + 1
    g = reopen(vg, pv_files)
    assert g.open_lv("precious").read(0, 14) == b"do not lose me"
    other = VolumeGroup.create("vgx", [_new_pv(tmp_path / "x.img")])
    with pytest.raises(LvmError, match="describes VG vg0"):
        other.restore(backup)
    other.close()
    g.close()


def _new_pv(path: Path) -> Path:
    pvcreate(path, size=16 * MiB, rng=random.Random(9))
    return path


def test_vgextend_adds_a_pv(vg: VolumeGroup, pv_files, tmp_path: Path) -> None:
    name = vg.vgextend(_new_pv(tmp_path / "pv2.img"))
    assert name == "pv2" and vg.summary().pv_count == 3
    vg.lvcreate("wide", 120 * MiB)  # needs all three PVs
    g = reopen(vg, [*pv_files, tmp_path / "pv2.img"])
    assert g.lv_size("wide") == 120 * MiB
    with pytest.raises(LvmError, match="already in VG vg0"):
        g.vgextend(tmp_path / "pv2.img")
    g.close()


def test_refresh_picks_up_another_handles_commits(vg: VolumeGroup, pv_files) -> None:
    other = VolumeGroup.open("vg0", pv_files)
    dev = other.open_lv("a") if other.meta.has_lv("a") else None
    assert dev is None
    vg.lvcreate("a", 8 * MiB)
    vg.open_lv("a").write(0, b"from the first handle")
    assert other.refresh() and not other.refresh()
    assert other.open_lv("a").read(0, 21) == b"from the first handle"
    other.lvcreate("b", 4 * MiB)  # no conflict after a refresh
    assert vg.refresh() and vg.lv_names() == ["a", "b"]
    check_consistency(vg.meta)
    other.close()


def test_striped_lv_spreads_units_across_pvs(vg: VolumeGroup, pv_files) -> None:
    vg.lvcreate("wide", 20 * MiB, stripes=2, stripe_size=64 << 10)  # 5 extents → 6 (3 + 3)
    seg = vg.meta.lv("wide").segments[0]
    assert [p for p, _ in seg.stripes] == ["pv0", "pv1"] and seg.extent_count == 6
    assert seg.stripe_size == 128
    dev = vg.open_lv("wide")
    data = random.Random(5).randbytes(1 * MiB + 12345)
    dev.write(100_000, data)
    assert dev.read(100_000, len(data)) == data
    # unit 0 (64 KiB) sits at the start of pv0's area, unit 1 at the start of pv1's
    dev.write(0, b"U0" + bytes(65534) + b"U1")
    pv0 = vg.devices["pv0"].io
    pv1 = vg.devices["pv1"].io
    start = vg.meta.pvs[0].pe_start * 512
    assert pv0.pread(start + seg.stripes[0][1] * 4 * MiB, 2) == b"U0"
    assert pv1.pread(start + seg.stripes[1][1] * 4 * MiB, 2) == b"U1"
    vg.lvextend("wide", 28 * MiB)  # another 2-stripe segment
    assert [len(s.stripes) for s in vg.meta.lv("wide").segments] == [2, 2]
    with pytest.raises(LvmError, match="multiples of 2"):
        vg.lvreduce("wide", 20 * MiB, force=True)
    vg.lvreduce("wide", 16 * MiB, force=True)
    assert vg.lv_size("wide") == 16 * MiB
    g = reopen(vg, pv_files)
    assert g.open_lv("wide").read(100_000, 1000) == data[:1000]
    with pytest.raises(LvmError, match="only 2 PVs"):
        g.lvcreate("three", 12 * MiB, stripes=3)
    g.close()


def test_one_writer_per_lv_across_vg_handles(vg: VolumeGroup, pv_files) -> None:
    """Two handles on one VG stand for two processes: while one holds an LV open for writing,
    the other cannot open it for writing (readers and other LVs are unaffected); the lock
    follows the LV through a rename and goes with close."""
    from storage.errors import LvmError

    vg.lvcreate("a", 8 << 20)
    vg.lvcreate("b", 8 << 20)
    writer = vg.open_lv("a", write_lock=True)
    other = VolumeGroup.open("vg0", pv_files)
    try:
        with pytest.raises(LvmError, match="open for writing elsewhere"):
            other.open_lv("a", write_lock=True)
        other.open_lv("a").close()                       # a reader
        other.open_lv("b", write_lock=True).close()      # another LV
        vg.lvrename("a", "a2")
        other.refresh()
        with pytest.raises(LvmError, match="open for writing elsewhere"):
            other.open_lv("a2", write_lock=True)
        writer.close()
        other.open_lv("a2", write_lock=True).close()
    finally:
        other.close()
