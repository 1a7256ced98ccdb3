"""Hostile bytes: any corruption of a VHD gives our typed error (or a readable image), never an
IndexError/struct.error/ValueError traceback."""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.devices.rawio import MemoryIO
from storage.errors import StorageError
from storage.vhd import format as fmt
from storage.vhd.image import VhdImage

KiB = 1024


def _sample() -> bytes:
    parent = VhdImage.create(MemoryIO(name="p.vhd"), size=256 * KiB, block_size=64 * KiB)
    io = MemoryIO(name="c.vhd")
    child = VhdImage.create(io, disk_type="differencing", parent=parent,
                            parent_path="/x/p.vhd", path="/x/c.vhd")
    child.write(1000, b"a" * 3000)
    child.write(200 * KiB, b"b" * 512)
    return bytes(io.buf)


SAMPLE = _sample()
HOT = [0, 16, 28, 48, 56, 60, 64, 512, 512 + 8, 512 + 16, 512 + 28, 512 + 32, 512 + 36,
       512 + 576, 1536, len(SAMPLE) - 512 + 16, len(SAMPLE) - 512 + 48]


def _try(data: bytes) -> None:
    try:
        img = VhdImage.open(MemoryIO(data, name="fuzz.vhd"), read_only=True)
        img.parent_locators()
        if img.parent_uuid is None:
            img.read(0, img.size)
        else:
            img.allocated_ranges()
    except StorageError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(st.sampled_from(HOT), st.integers(0, len(SAMPLE) - 1)),
                          st.integers(0, 255)), min_size=1, max_size=6),
       st.one_of(st.none(), st.integers(0, len(SAMPLE))), st.booleans())
def test_corrupted_bytes_never_escape_as_tracebacks(flips: list[tuple[int, int]],
                                                    cut: int | None, fix: bool) -> None:
    data = bytearray(SAMPLE)
    for off, val in flips:
        data[off] = val
    if fix:   # re-seal the checksums so the damage reaches the deeper checks
        end = len(data) - 512
        for base, at in ((0, 64), (end, 64), (512, 36)):
            size = 1024 if base == 512 else 512
            data[base + at:base + at + 4] = fmt.checksum(bytes(data[base:base + size]),
                                                          at).to_bytes(4, "big")
        if data[:512] != data[end:]:
            data[end:] = data[:512]
    if cut is not None:
        del data[cut:]
    _try(bytes(data))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1))
def test_hostile_header_fields_with_valid_checksums(entries: int, block: int, table: int) -> None:
    """Fields that pass the checksum but make no sense are refused by name."""
    h = fmt.DynamicHeader.unpack(SAMPLE[512:1536])
    raw = bytearray(SAMPLE[512:1536])
    struct.pack_into(">QQ", raw, 8, 0xFFFFFFFFFFFFFFFF, table)
    struct.pack_into(">II", raw, 28, entries, block)
    struct.pack_into(">I", raw, 36, 0)
    struct.pack_into(">I", raw, 36, fmt.checksum(bytes(raw), 36))
    data = SAMPLE[:512] + bytes(raw) + SAMPLE[1536:]
    assert h.max_table_entries > 0
    _try(data)
