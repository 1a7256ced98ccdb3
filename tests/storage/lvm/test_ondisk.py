"""PV label and metadata-area header codecs (LVM2's binary layout)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.errors import LvmError
from storage.lvm.ondisk import (
    MDA_HEADER_SIZE,
    DiskLocn,
    MdaHeader,
    PvLabel,
    RawLocn,
    circular_read_plan,
    format_id,
    lvm_crc,
    next_text_offset,
    pack_label,
    pack_mda_header,
    parse_id,
    unpack_label,
    unpack_mda_header,
)

UUID = "eX1y9lMfIIEKrEAOLI9EOrug0JrVF7ro"


def test_lvm_crc_is_zlib_crc32_with_lvm_seed_and_no_final_inversion() -> None:
    # The same function with the standard seed and inversions is plain CRC-32.
    assert lvm_crc(b"123456789", 0xFFFFFFFF) ^ 0xFFFFFFFF == 0xCBF43926


def test_label_round_trip_and_layout() -> None:
    label = PvLabel(pv_uuid=UUID, device_size=64 << 20, data_areas=[DiskLocn(1 << 20, 0)],
                    metadata_areas=[DiskLocn(4096, 1044480), DiskLocn(63 << 20, 1 << 20)],
                    ext_flags=1)
    sector = pack_label(label)
    assert len(sector) == 512 and sector[:8] == b"LABELONE" and sector[24:32] == b"LVM2 001"
    assert sector[32:64] == UUID.encode()
    assert unpack_label(sector) == label


def test_damaged_label_is_refused_with_reason() -> None:
    sector = bytearray(pack_label(PvLabel(pv_uuid=UUID, device_size=1 << 30)))
    sector[100] ^= 1
    with pytest.raises(LvmError, match=r"pv\.img: label checksum mismatch"):
        unpack_label(bytes(sector), "pv.img")
    with pytest.raises(LvmError, match="no LVM label"):
        unpack_label(bytes(512), "pv.img")


def test_mda_header_round_trip_and_checksum() -> None:
    h = MdaHeader(start=4096, size=1044480, locns=[RawLocn(5120, 1677, 0x5A1D70E0)])
    buf = pack_mda_header(h)
    assert buf[4:20] == b" LVM2 x[5A%r0N*>"
    assert unpack_mda_header(buf) == h
    bad = bytearray(buf)
    bad[40] ^= 0xFF
    with pytest.raises(LvmError, match="checksum mismatch"):
        unpack_mda_header(bytes(bad))


def test_ids_format_like_lvm2() -> None:
    assert format_id(UUID) == "eX1y9l-MfII-EKrE-AOLI-9EOr-ug0J-rVF7ro"
    assert parse_id("eX1y9l-MfII-EKrE-AOLI-9EOr-ug0J-rVF7ro") == UUID
    with pytest.raises(LvmError):
        parse_id("short")


def test_wrapped_text_is_read_in_two_pieces() -> None:
    h = MdaHeader(start=4096, size=8192)
    assert circular_read_plan(h, RawLocn(7680, 1024, 0)) == [(4096 + 7680, 512),
                                                              (4096 + MDA_HEADER_SIZE, 512)]
    with pytest.raises(LvmError):
        circular_read_plan(h, RawLocn(100, 10, 0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30))
def test_new_text_never_overlaps_the_committed_one(sizes: list[int]) -> None:
    size = 16384
    h = MdaHeader(start=0, size=size)
    for n in sizes:
        off = next_text_offset(h, n)
        assert MDA_HEADER_SIZE <= off < size and off % 512 == 0 and off + n <= size
        if h.locns:
            cur = h.locns[0]
            assert off + n <= cur.offset or off >= cur.offset + cur.size
        h = MdaHeader(start=0, size=size, locns=[RawLocn(off, n, 0)])
