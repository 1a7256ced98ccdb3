"""The pure VHD codec: footer/header round trips, validation errors, geometry, BAT, bitmaps."""
from __future__ import annotations

import itertools
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.errors import VhdFormatError
from storage.vhd import format as fmt
from storage.vhd.format import DynamicHeader, Footer, ParentLocator

U = uuid.UUID("12345678-1234-5678-1234-567812345678")


def make_footer(**kw: object) -> Footer:
    size, geo = fmt.round_to_geometry(64 * 2**20)
    args: dict = dict(disk_type=fmt.DISK_DYNAMIC, current_size=size, original_size=size,
                      geometry=geo, uuid=U, timestamp=12345)
    args.update(kw)
    return Footer(**args)


def test_footer_round_trip_and_layout() -> None:
    f = make_footer()
    raw = f.pack()
    assert len(raw) == 512 and raw[:8] == b"conectix"
    assert raw[28:32] == b"hvsm"                      # creator app at its spec offset
    assert int.from_bytes(raw[48:56], "big") == f.current_size
    assert raw[68:84] == U.bytes
    assert Footer.unpack(raw) == f


def test_footer_checksum_is_ones_complement_of_byte_sum() -> None:
    raw = make_footer().pack()
    stored = int.from_bytes(raw[64:68], "big")
    assert stored == (~(sum(raw) - sum(raw[64:68]))) & 0xFFFFFFFF


@pytest.mark.parametrize(("offset", "field"), [(64, "checksum"), (0, "cookie")])
def test_footer_corruption_names_field_and_offset(offset: int, field: str) -> None:
    raw = bytearray(make_footer().pack())
    raw[offset] ^= 0x55
    with pytest.raises(VhdFormatError) as exc:
        Footer.unpack(bytes(raw), source="disk.vhd", offset=4096)
    msg = str(exc.value)
    assert "disk.vhd" in msg and repr(field) in msg and f"offset {4096 + offset}" in msg


def test_footer_bad_disk_type_rejected_even_with_good_checksum() -> None:
    raw = Footer(**{**make_footer().__dict__, "disk_type": 5}).pack()
    with pytest.raises(VhdFormatError, match="disk_type"):
        Footer.unpack(raw)


def test_header_round_trip_with_parent() -> None:
    loc = ParentLocator(code=fmt.PLATFORM_W2RU, data_space=512, data_length=20,
                        data_offset=2048)
    h = DynamicHeader(table_offset=1536, max_table_entries=33, block_size=2**21,
                      parent_uuid=U, parent_timestamp=99, parent_name="base.vhd",
                      locators=(loc,) + (ParentLocator(),) * 7)
    raw = h.pack()
    assert len(raw) == 1024 and raw[:8] == b"cxsparse"
    assert raw[64:64 + 16] == "base.vhd".encode("utf-16-be")
    back = DynamicHeader.unpack(raw)
    assert back == h
    bad = bytearray(raw)
    bad[40] ^= 1
    with pytest.raises(VhdFormatError, match=r"'checksum' at offset 548"):
        DynamicHeader.unpack(bytes(bad))


def test_header_rejects_non_power_of_two_block_size() -> None:
    raw = DynamicHeader(table_offset=1536, max_table_entries=1, block_size=3 * 512).pack()
    with pytest.raises(VhdFormatError, match="block_size"):
        DynamicHeader.unpack(raw)


def test_locator_data_space_in_sectors_is_understood() -> None:
    raw = fmt._LOCATOR.pack(b"W2ku", 2, 40, 0, 4096)
    assert ParentLocator.unpack(raw).data_space == 1024


@pytest.mark.parametrize("code", [fmt.PLATFORM_W2KU, fmt.PLATFORM_W2RU, fmt.PLATFORM_MACX])
def test_locator_encodings(code: bytes) -> None:
    data = fmt.encode_locator(code, "./dir/päth.vhd")
    if code == fmt.PLATFORM_MACX:
        assert data.startswith(b"file://")
    else:
        assert data == "./dir/päth.vhd".encode("utf-16-le")
    assert fmt.decode_locator(code, data + b"\0\0") == "./dir/päth.vhd"


def test_geometry_matches_qemu_img_sizes() -> None:
    # `qemu-img create -f vpc X 64M` makes a 67,125,248-byte disk (964/8/17): QEMU rounds up.
    assert fmt.round_to_geometry(64 * 2**20) == (67125248, (964, 8, 17))
    assert fmt.round_to_geometry(2**30) == (1073995776, (2081, 16, 63))
    # Above the largest geometry the size is kept and the geometry pinned at the maximum.
    assert fmt.round_to_geometry(200 * 2**30) == (200 * 2**30, (65535, 16, 255))
    with pytest.raises(VhdFormatError):
        fmt.round_to_geometry(3000 * 2**30)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=fmt.MAX_CHS_SECTORS - 1))
def test_rounded_geometry_covers_size_exactly(sectors: int) -> None:
    size, (c, h, s) = fmt.round_to_geometry(sectors * 512)
    assert size == c * h * s * 512 >= sectors * 512


def test_virtual_size_honours_creator_quirks() -> None:
    f = make_footer(current_size=70 * 2**20)
    assert f.virtual_size == 70 * 2**20            # we (and Hyper-V, XenServer) use current_size
    vpc = make_footer(current_size=70 * 2**20, creator_app=b"vpc ")
    assert vpc.virtual_size == vpc.chs_size        # Virtual PC sizes by geometry


def test_bat_round_trip_is_big_endian_and_padded() -> None:
    raw = fmt.pack_bat([3, fmt.UNALLOCATED, 0x01020304])
    assert len(raw) == 512
    assert raw[:12] == b"\0\0\0\x03\xff\xff\xff\xff\x01\x02\x03\x04"
    assert raw[12:] == b"\xff" * 500
    assert list(fmt.unpack_bat(raw, 3)) == [3, fmt.UNALLOCATED, 0x01020304]


def test_bitmap_size() -> None:
    assert fmt.bitmap_size(2 * 2**20) == 512
    assert fmt.bitmap_size(512 * 1024) == 512
    assert fmt.bitmap_size(4 * 2**20 * 2) == 2048


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 300)), max_size=8),
       st.integers(0, 4095), st.integers(1, 4096))
def test_bitmap_set_and_runs_match_a_bit_model(sets: list[tuple[int, int]], start: int,
                                               count: int) -> None:
    count = min(count, 4096 - start)
    bm = bytearray(512)
    model = [False] * 4096
    for s, n in sets:
        n = min(n, 4096 - s)
        fmt.bitmap_set(bm, s, n)
        model[s:s + n] = [True] * n
    # MSB first: bit 0 is 0x80 of byte 0
    assert all(fmt.bitmap_test(bm, i) == model[i] for i in range(4096))
    runs = fmt.bitmap_runs(bytes(bm), start, count)
    flat = [is_set for _, n, is_set in runs for _ in range(n)]
    assert flat == model[start:start + count]
    assert all(a[2] != b[2] for a, b in itertools.pairwise(runs))
    assert fmt.bitmap_count(bytes(bm), 4096) == sum(model)
    assert fmt.bitmap_all_set(bm, start, count) == all(model[start:start + count])
    assert fmt.bitmap_all_set(bm, 0, 4096) == all(model)


def test_bitmap_bit_zero_is_most_significant() -> None:
    bm = bytearray(512)
    fmt.bitmap_set(bm, 0, 1)
    assert bm[0] == 0x80
    fmt.bitmap_set(bm, 9, 1)
    assert bm[1] == 0x40


@pytest.mark.parametrize("clear", [None, 0, 7, 8, 2047, 4088, 4095])
def test_bitmap_all_set_sees_any_clear_bit(clear: int | None) -> None:
    bm = bytearray(b"\xff" * 512)
    if clear is not None:
        bm[clear // 8] &= ~(0x80 >> clear % 8) & 0xFF
    assert fmt.bitmap_all_set(bm, 0, 4096) is (clear is None)
    for start, count in ((0, 8), (3, 9), (4088, 8), (2040, 16)):
        hit = clear is not None and start <= clear < start + count
        assert fmt.bitmap_all_set(bm, start, count) is not hit
