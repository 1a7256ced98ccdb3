"""VhdImage: create/open fixed, dynamic and differencing images, sector I/O, crash ordering."""
from __future__ import annotations

import os

import pytest

from storage.devices.blockdev import BlockDevice
from storage.devices.rawio import MemoryIO
from storage.errors import StorageError, VhdFormatError
from storage.vhd import format as fmt
from storage.vhd.image import VhdImage

MiB = 2**20


def reopen(io: MemoryIO, **kw: object) -> VhdImage:
    return VhdImage.open(MemoryIO(bytes(io.buf), name=io.name), **kw)


@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_create_write_read_reopen(kind: str) -> None:
    io = MemoryIO(name="d.vhd")
    img = VhdImage.create(io, size=8 * MiB, disk_type=kind)
    assert isinstance(img, BlockDevice)
    assert img.size == fmt.round_to_geometry(8 * MiB)[0]
    img.write(3, b"abc")                      # unaligned, inside one sector
    img.write(2 * MiB - 100, os.urandom(300))  # straddles a block boundary
    data = img.read(2 * MiB - 100, 300)
    assert img.read(0, 8) == b"\0\0\0abc\0\0"
    again = reopen(io)
    assert again.disk_type == kind
    assert again.read(0, 8) == b"\0\0\0abc\0\0"
    assert again.read(2 * MiB - 100, 300) == data
    assert again.read(5 * MiB, 4096) == bytes(4096)


def test_sparse_allocation_and_zero_writes() -> None:
    io = MemoryIO()
    img = VhdImage.create(io, size=16 * MiB, block_size=MiB)
    size0 = io.size()
    img.write(5 * MiB, bytes(4096))          # zeros into an unallocated dynamic block: no-op
    assert img.allocated_blocks == 0 and io.size() == size0
    img.write(5 * MiB + 512, b"x" * 512)
    assert img.allocated_blocks == 1
    # bitmap + block, footer moved to the end; the block's data starts on a page boundary
    # (the bitmap sits just before it, after a gap of at most a page)
    data_at = img.bat[5] * 512 + 512
    assert data_at % 4096 == 0 and size0 - 512 <= img.bat[5] * 512 < size0 - 512 + 4096
    assert io.size() == data_at + MiB + 512
    assert img.read(5 * MiB, 1024) == bytes(512) + b"x" * 512
    again = reopen(io)
    assert again.read(5 * MiB, 1024) == bytes(512) + b"x" * 512 and again.warnings == []


def test_differencing_reads_parent_per_sector_and_zero_writes_allocate() -> None:
    pio, cio = MemoryIO(name="p.vhd"), MemoryIO(name="c.vhd")
    parent = VhdImage.create(pio, size=4 * MiB)
    parent.write(0, b"P" * 8192)
    child = VhdImage.create(cio, disk_type="differencing", parent=parent)
    assert child.size == parent.size and child.parent_uuid == parent.uuid
    child.write(512, b"C" * 512)             # sector 1 only: bits in the same byte differ
    assert child.read(0, 2048) == b"P" * 512 + b"C" * 512 + b"P" * 1024
    child.write(4096, bytes(512))            # zeros must hide the parent's data
    assert child.allocated_blocks == 1
    assert child.read(4096, 1024) == bytes(512) + b"P" * 512
    child.write(3 * MiB, bytes(512))         # zeros into an unallocated block still allocate
    assert child.allocated_blocks == 2
    bm = child.bitmap(0)
    assert bm[0] == 0b01000000 and bm[1] == 0b10000000   # MSB first: sectors 1 and 8


def test_read_past_end_and_read_only_refused() -> None:
    img = VhdImage.create(MemoryIO(), size=MiB)
    with pytest.raises(StorageError, match="outside the disk"):
        img.read(img.size - 10, 20)
    ro = reopen(img.io, read_only=True)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="read-only"):
        ro.write(0, b"x")


class CrashIO(MemoryIO):
    """A MemoryIO that 'crashes' (raises) on the N-th pwrite, keeping what landed before."""

    def __init__(self, data: bytes, crash_at: int) -> None:
        super().__init__(data, name="crash.vhd")
        self.left = crash_at

    def pwrite(self, offset: int, data: bytes) -> None:
        if self.left == 0:
            raise OSError("simulated crash")
        self.left -= 1
        super().pwrite(offset, data)


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_crash_at_every_step_of_an_allocating_write_keeps_old_data(kind: str) -> None:
    pio = MemoryIO(name="p.vhd")
    parent = VhdImage.create(pio, size=8 * MiB, block_size=MiB)
    parent.write(2 * MiB, b"old" * 1000)
    if kind == "differencing":
        base_io = MemoryIO(name="c.vhd")
        VhdImage.create(base_io, disk_type="differencing", parent=parent).write(0, b"c0")
        base = bytes(base_io.buf)
    else:
        base = bytes(pio.buf)
    expected_old = None
    for crash_at in range(0, 16):
        io = CrashIO(base, crash_at)
        img = VhdImage.open(io)
        img.parent = parent if kind == "differencing" else None
        expected_old = img.read(0, img.size)
        try:
            img.write(5 * MiB + 100, b"new" * 500)   # allocates block 5
            img.write(2 * MiB, b"NEW")
            done = True
        except OSError:
            done = False
        after = VhdImage.open(MemoryIO(bytes(io.buf)), read_only=True)
        after.parent = img.parent
        got = after.read(0, after.size)
        if done:
            assert got[5 * MiB + 100:5 * MiB + 1600] == b"new" * 500
            break
        # Every byte reads either as before or as the new write put it, never garbage.
        assert got[:5 * MiB] == expected_old[:5 * MiB] or got[2 * MiB:2 * MiB + 3] == b"NEW"
        assert got[5 * MiB + 1600:] == expected_old[5 * MiB + 1600:]
        # ... and reopening read-write repairs a lost footer.
        fixed_io = MemoryIO(bytes(io.buf))
        VhdImage.open(fixed_io).close()
        assert VhdImage.open(MemoryIO(bytes(fixed_io.buf))).warnings == []
    else:
        pytest.fail("the write never completed")


def test_resize_grow_shrink_and_bat_relocation() -> None:
    io = MemoryIO()
    img = VhdImage.create(io, size=2 * MiB, block_size=512 * 1024)
    img.write(MiB, b"keep")
    new = img.resize(64 * MiB)                 # BAT must move: it had room for 5 entries only
    assert new == fmt.round_to_geometry(64 * MiB)[0]
    img.write(60 * MiB, b"far")
    again = reopen(io)
    assert again.size == new
    assert again.read(MiB, 4) == b"keep" and again.read(60 * MiB, 3) == b"far"
    with pytest.raises(StorageError, match="would lose data"):
        again.resize(8 * MiB)
    again.write(60 * MiB, bytes(3))
    assert again.resize(8 * MiB) == fmt.round_to_geometry(8 * MiB)[0]
    assert reopen(again.io).read(MiB, 4) == b"keep"  # type: ignore[arg-type]


def test_fixed_resize() -> None:
    io = MemoryIO()
    img = VhdImage.create(io, size=MiB, disk_type="fixed")
    img.write(100, b"abc")
    img.resize(3 * MiB)
    again = reopen(io)
    assert again.read(100, 3) == b"abc" and again.read(MiB, 1024) == bytes(1024)
    assert io.size() == again.size + 512


def test_open_rejects_garbage_with_clear_message() -> None:
    with pytest.raises(VhdFormatError, match="not a VHD"):
        VhdImage.open(MemoryIO(b"x" * 4096, name="junk.img"))
    with pytest.raises(VhdFormatError, match="too short"):
        VhdImage.open(MemoryIO(b"x" * 100, name="junk.img"))
