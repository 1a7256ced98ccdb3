"""`VhdImage.write`'s fast path: an aligned write inside a block whose sectors are all present is
one pwrite at a cached data offset (straight on the file's descriptor). Nothing that changes
where a block lives (discard, shrink and regrow, close) may leave a stale offset behind: the
next write must go where a fresh open of the file would read it from."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from storage.devices.rawio import MemoryIO
from storage.errors import StorageError
from storage.vhd import chain
from storage.vhd.image import VhdImage

KiB, MiB = 1 << 10, 1 << 20
BS = 64 * KiB


def _reread(path: Path) -> bytes:
    """The whole disk as a fresh open of the file reads it (no cache of the writer's)."""
    img = chain.open_chain(path)
    try:
        return img.read(0, img.size)
    finally:
        img.close()


def _filled(path: Path, size: int = MiB) -> VhdImage:
    img = chain.create_image(path, size=size, block_size=BS)
    img.write(0, b"a" * img.size)          # every block allocated and wholly present
    return img


def test_fast_path_writes_straight_to_the_file(tmp_path: Path) -> None:
    img = _filled(tmp_path / "d.vhd")
    assert img._fast_fd == img.io.fileno()   # type: ignore[attr-defined]
    img.write(BS + 4096, b"b" * 4096)
    assert img.read(BS + 4096, 4096) == b"b" * 4096
    img.close()
    want = bytearray(b"a" * len(_reread(tmp_path / "d.vhd")))
    want[BS + 4096:BS + 8192] = b"b" * 4096
    assert _reread(tmp_path / "d.vhd") == want


def test_write_after_discard_allocates_again_instead_of_the_old_place(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    img = _filled(path)
    old = img.bat[3]
    img.discard(3 * BS, BS)                  # block 3 unmapped: its old data is unreferenced
    img.write(3 * BS + 512, b"n" * 4096)     # a stale cached offset would write to `old`
    assert img.bat[3] != 0xFFFFFFFF and img.bat[3] != old
    img.close()
    data = _reread(path)
    assert data[3 * BS:4 * BS] == bytes(512) + b"n" * 4096 + bytes(BS - 4608)
    assert data[2 * BS:3 * BS] == b"a" * BS and data[4 * BS:5 * BS] == b"a" * BS


def test_write_after_shrink_and_regrow_allocates_again(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    img = _filled(path, size=2 * MiB)
    size = img.size
    img.write(0, bytes(size))                # zeros: shrinking refuses to drop data
    img.resize(MiB)                          # the BAT entries past 1 MiB are dropped...
    img.resize(size)                         # ...and come back unallocated
    img.write(size - BS, b"z" * 4096)
    img.close()
    data = _reread(path)
    assert data[size - BS:size - BS + 4096] == b"z" * 4096
    assert data.count(0) == len(data) - 4096


def test_write_after_close_is_refused_and_touches_no_reused_descriptor(tmp_path: Path) -> None:
    img = _filled(tmp_path / "d.vhd")
    fd = img._fast_fd
    img.close()
    other = tmp_path / "other"
    other.write_bytes(bytes(2 * MiB))
    reused = os.open(other, os.O_RDWR)       # the lowest free number: usually the old one
    try:
        with pytest.raises(StorageError, match="closed"):
            img.write(BS, b"x" * 4096)
    finally:
        os.close(reused)
    assert fd >= 0 and other.read_bytes() == bytes(2 * MiB)


def test_read_only_open_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    _filled(path).close()
    ro = chain.open_chain(path)              # read-only: blocks get cached as full on read
    assert ro.read(0, 4096) == b"a" * 4096
    with pytest.raises(StorageError, match="read-only"):
        ro.write(0, b"x" * 4096)
    ro.close()
    assert _reread(path)[:4096] == b"a" * 4096


def test_write_past_the_end_of_a_partial_last_block_is_refused(tmp_path: Path) -> None:
    img = chain.create_image(tmp_path / "d.vhd", size=MiB, block_size=BS)
    img.write(0, b"a" * img.size)
    end = img.size
    assert end % BS                          # the last block reaches past the disk
    with pytest.raises(StorageError, match="outside the disk"):
        img.write(end - 512, b"x" * 1024)
    img.close()


def test_differencing_child_fast_path_leaves_the_parent_alone(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    _filled(base).close()
    leaf = chain.create_image(tmp_path / "leaf.vhd", parent_path=base)
    leaf.write(BS, b"c" * BS)                # the child's block 1, wholly present
    leaf.write(BS + 8192, b"d" * 4096)       # fast path
    assert leaf.read(BS + 4096, 12288) == b"c" * 4096 + b"d" * 4096 + b"c" * 4096
    leaf.close()
    assert _reread(base) == b"a" * len(_reread(base))
    got = _reread(tmp_path / "leaf.vhd")
    assert got[BS + 8192:BS + 12288] == b"d" * 4096 and got[:BS] == b"a" * BS


def test_memory_container_takes_the_io_path() -> None:
    img = VhdImage.create(MemoryIO(name="m"), size=MiB, block_size=BS)
    img.write(0, b"a" * BS)
    assert img._fast_fd == -1
    img.write(4096, b"b" * 4096)
    assert img.read(0, BS) == b"a" * 4096 + b"b" * 4096 + b"a" * (BS - 8192)


_op = st.one_of(
    # an aligned write inside one block (the fast path once the block is wholly present)
    st.tuples(st.just("write"), st.integers(0, 3).flatmap(
        lambda blk: st.integers(blk * BS // 512, (blk + 1) * BS // 512 - 8).map(lambda s: s * 512)),
        st.integers(1, 8).map(lambda n: n * 512), st.integers(1, 255)),
    # any write: unaligned, across blocks, whole blocks
    st.tuples(st.just("write"), st.integers(0, 4 * BS - 1), st.integers(1, 2 * BS),
              st.integers(1, 255)),
    st.tuples(st.just("discard"), st.integers(0, 3)),
    st.tuples(st.just("shrink_regrow"), st.integers(1, 3)),
    st.tuples(st.just("reopen")),
)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=1, max_size=30))
@example([("write", BS, 512, 1), ("discard", 1), ("write", BS + 4096, 4096, 2)])
@example([("write", 0, 4 * BS, 1), ("shrink_regrow", 1), ("write", 2 * BS, 4096, 2)])
@example([("write", 0, BS, 1), ("reopen",), ("write", 4096, 4096, 2), ("discard", 0),
          ("write", 0, 512, 3)])
def test_file_backed_writes_match_a_model(ops: list[tuple]) -> None:
    """Random writes (aligned: the fast path; unaligned: the general one), discards, shrink +
    regrow and reopens on a file: what the writer reads and what a fresh open of the file
    reads both equal a byte model."""
    size = 4 * BS
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.vhd"
        img = chain.create_image(path, size=size, block_size=BS)
        size = img.size
        model = bytearray(size)
        try:
            for op in ops:
                if op[0] == "write":
                    _, off, ln, val = op
                    if off >= size:
                        continue
                    ln = min(ln, size - off)
                    img.write(off, bytes([val]) * ln)
                    model[off:off + ln] = bytes([val]) * ln
                elif op[0] == "discard":
                    img.discard(op[1] * BS, BS)
                    model[op[1] * BS:(op[1] + 1) * BS] = bytes(BS)
                elif op[0] == "shrink_regrow":
                    keep = op[1] * BS
                    img.write(keep, bytes(size - keep))   # shrinking keeps no data
                    model[keep:] = bytes(size - keep)
                    img.resize(keep)
                    img.resize(size)
                else:
                    img.close()
                    img = chain.open_chain(path, read_only=False)
                assert img.read(0, size) == model
        finally:
            img.close()
        assert _reread(path) == model
