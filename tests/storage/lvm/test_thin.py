"""Thin pools: thin LVs and thin snapshots share chunks; the pool's table survives crashes."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.devices.rawio import MemoryIO
from storage.errors import LvmError
from storage.lvm import VolumeGroup, pvcreate
from storage.lvm.alloc import check_consistency
from storage.lvm.textfmt import emit_text, parse_text
from storage.lvm.thin import ThinPoolFullError

MiB = 1 << 20
CHUNK = 64 << 10
DATA = Path(__file__).parent / "data"


def mem_vg(size: int = 64 * MiB) -> tuple[VolumeGroup, MemoryIO]:
    io = MemoryIO(bytes(size), name="pv0")
    pvcreate("pv0", size=size, io=io, rng=random.Random(1))
    return VolumeGroup.create("vgt", [io], extent_size=MiB, rng=random.Random(2)), io


def test_snapshot_shares_chunks_until_written() -> None:
    g, _ = mem_vg()
    g.lvcreate_thin_pool("pool", 16 * MiB)
    g.lvcreate_thin("t1", 100 * MiB, "pool")  # overprovisioned: bigger than the pool
    t1 = g.open_lv("t1")
    base = random.Random(3).randbytes(MiB)
    t1.write(0, base)
    tp = g.pool("pool")
    assert tp.used_chunks == 16
    g.lvcreate("s1", 0, snapshot_of="t1")
    assert tp.used_chunks == 16  # nothing copied
    t1.write(CHUNK + 5, b"origin")  # breaks sharing of one chunk
    s1 = g.open_lv("s1")
    s1.write(3 * CHUNK, b"snap")  # and one more, from the other side
    assert tp.used_chunks == 18
    assert s1.read(0, MiB)[:3 * CHUNK] == base[:3 * CHUNK]
    assert s1.read(3 * CHUNK, 4) == b"snap" and t1.read(3 * CHUNK, 4) == base[3 * CHUNK:][:4]
    assert t1.read(CHUNK + 5, 6) == b"origin" and s1.read(CHUNK + 5, 6) == base[CHUNK + 5:][:6]
    assert t1.read(50 * MiB, 10) == bytes(10)  # never written: zeros, no chunk used
    assert g.thin_segment("s1").origin == "t1"  # type: ignore[union-attr]
    assert g.pool_segment("pool").transaction_id == 2  # type: ignore[union-attr]


def test_pool_full_is_a_clear_error_and_extending_the_pool_helps() -> None:
    g, _ = mem_vg()
    g.lvcreate_thin_pool("pool", 2 * MiB)
    g.lvcreate_thin("t", 50 * MiB, "pool")
    t = g.open_lv("t")
    t.write(0, b"k" * (2 * MiB))
    with pytest.raises(ThinPoolFullError, match="out of data space"):
        t.write(10 * MiB, b"more")
    assert t.read(0, 4) == b"kkkk"
    g.lvextend("pool", 4 * MiB)
    t.write(10 * MiB, b"more")
    assert t.read(10 * MiB, 4) == b"more" and g.lv_size("pool") == 4 * MiB


def test_mappings_persist_and_a_crash_loses_only_unflushed_writes() -> None:
    g, io = mem_vg()
    g.lvcreate_thin_pool("pool", 16 * MiB)
    g.lvcreate_thin("t", 8 * MiB, "pool")
    t = g.open_lv("t")
    t.write(0, b"A" * CHUNK)
    t.flush()
    g.lvcreate("s", 0, snapshot_of="t")  # committed: both map chunk 0
    t.write(0, b"B" * CHUNK)  # copy-on-write into a new chunk, not yet committed
    s = g.open_lv("s")
    s.write(0, b"C" * CHUNK)  # must not overwrite the committed shared chunk either
    t.write(2 * CHUNK, b"D")  # a new mapping, never flushed
    crashed = VolumeGroup.open_ios("vgt", [io])  # the first handle never closed or flushed
    assert crashed.open_lv("t").read(0, CHUNK) == b"A" * CHUNK
    assert crashed.open_lv("s").read(0, CHUNK) == b"A" * CHUNK
    assert crashed.open_lv("t").read(2 * CHUNK, 1) == b"\0"
    g.close()  # a clean close commits
    again = VolumeGroup.open_ios("vgt", [io])
    assert again.open_lv("t").read(0, 1) == b"B" and again.open_lv("s").read(0, 1) == b"C"
    assert again.open_lv("t").read(2 * CHUNK, 1) == b"D"


def test_remove_discard_reduce_and_orphans() -> None:
    g, io = mem_vg()
    g.lvcreate_thin_pool("pool", 16 * MiB)
    g.lvcreate_thin("t", 8 * MiB, "pool")
    t = g.open_lv("t")
    t.write(0, b"x" * (4 * CHUNK))
    tp = g.pool("pool")
    t.discard(CHUNK, 2 * CHUNK)
    assert tp.used_chunks == 2 and t.read(CHUNK, 4) == bytes(4)
    t.write(5 * MiB, b"tail")
    with pytest.raises(LvmError, match="would destroy data"):
        g.lvreduce("t", 4 * MiB)
    g.lvreduce("t", 4 * MiB, force=True)
    assert g.lv_size("t") == 4 * MiB and tp.used_chunks == 2
    with pytest.raises(LvmError, match="thin pools cannot be reduced"):
        g.lvreduce("pool", 8 * MiB)
    with pytest.raises(LvmError, match="holding t"):
        g.lvremove("pool")
    g.lvremove("t")
    assert tp.used_chunks == 0 and 1 not in tp.maps
    tp.create(7)  # as if a crash came between the pool change and the VG commit
    again = VolumeGroup.open_ios("vgt", [io])
    assert 7 not in again.pool("pool").maps  # orphan dropped on open
    g.lvcreate_thin("u", 4 * MiB, "pool")
    g.lvremove("pool", force=True)
    assert g.lv_names() == [] and not g.meta.has_lv("pool_tdata")
    check_consistency(g.meta)


def test_lvm2_written_thin_metadata_round_trips() -> None:
    """LVM2 2.03.16's vgcfgbackup of a VG holding our thin pool re-emits byte for byte."""
    text = (DATA / "lvm2-2.03.16-thin-vgcfgbackup.txt").read_text()
    vg, header = parse_text(text)
    assert emit_text(vg, header, "file") == text
    assert vg.lv("s1").segments[0].origin == "t1"
    assert vg.lv("pool").segments[0].metadata == "pool_tmeta"


ops = st.lists(st.tuples(st.sampled_from(["write", "snap", "remove", "discard", "flush",
                                          "reopen"]),
                         st.integers(0, 7), st.integers(0, 4 * MiB - 1), st.integers(1, 200_000)),
               min_size=1, max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_thin_devices_match_a_model(steps) -> None:
    g, io = mem_vg()
    g.lvcreate_thin_pool("pool", 24 * MiB)
    g.lvcreate_thin("d0", 4 * MiB, "pool")
    model = {"d0": bytearray(4 * MiB)}
    serial = 0
    for op, which, off, n in steps:
        names = sorted(model)
        name = names[which % len(names)]
        if op == "write":
            n = min(n, 4 * MiB - off)
            data = random.Random(off).randbytes(n)
            g.open_lv(name).write(off, data)
            model[name][off:off + n] = data
        elif op == "snap" and len(model) < 6:
            serial += 1
            g.lvcreate(f"s{serial}", 0, snapshot_of=name)
            model[f"s{serial}"] = bytearray(model[name])
        elif op == "remove" and len(model) > 1:
            g.lvremove(name)
            del model[name]
        elif op == "discard":
            n = min(n, 4 * MiB - off)
            g.open_lv(name).discard(off, n)  # whole chunks unmapped, partial ones zeroed
            model[name][off:off + n] = bytes(n)
        elif op == "flush":
            g.pool("pool").commit()
        elif op == "reopen":
            g.close()
            g = VolumeGroup.open_ios("vgt", [io])
        tp = g.pool("pool")
        distinct = {d for m in tp.maps.values() for d in m.values()}
        assert tp.used_chunks == len(distinct)
    for name, want in model.items():
        assert g.open_lv(name).read(0, 4 * MiB) == bytes(want), name
    g.close()
