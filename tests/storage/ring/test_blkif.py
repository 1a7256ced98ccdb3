"""Wire layouts and index arithmetic of the blkif ring, against the sizes in Xen's headers."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.errors import RingProtocolError
from storage.rings import blkif
from storage.rings.blkif import DiscardRequest, IndirectRequest, Op, Request, Response, Segment


def test_x86_64_sizes_match_xen_headers() -> None:
    assert blkif.HEADER_SIZE == 64
    assert blkif.REQUEST.size == 112
    assert blkif.RESPONSE.size == 16
    assert blkif.DISCARD.size == 32
    assert blkif.INDIRECT.size == 64
    assert blkif.SLOT_SIZE == 112
    assert blkif.SEGMENTS_PER_INDIRECT_PAGE == 512


@pytest.mark.parametrize(("pages", "slots"), [(1, 32), (2, 64), (4, 128), (8, 256), (3, 64)])
def test_slot_count_rounds_down_to_power_of_two(pages: int, slots: int) -> None:
    assert blkif.ring_slots(pages) == slots
    assert blkif.slot_offset(slots - 1, slots) + blkif.SLOT_SIZE <= pages * 4096


def test_request_field_offsets() -> None:
    buf = bytearray(112)
    req = Request(op=Op.WRITE, id=0x1122334455667788, sector=0x99, handle=0x3344,
                  segments=(Segment(0xAABBCCDD, 1, 7), Segment(5, 0, 3)))
    blkif.pack_request_into(buf, 0, req)
    assert buf[0] == 1 and buf[1] == 2
    assert buf[2:4] == (0x3344).to_bytes(2, "little")
    assert buf[8:16] == (0x1122334455667788).to_bytes(8, "little")
    assert buf[16:24] == (0x99).to_bytes(8, "little")
    assert buf[24:28] == (0xAABBCCDD).to_bytes(4, "little") and buf[28] == 1 and buf[29] == 7
    assert buf[32:36] == (5).to_bytes(4, "little")
    assert blkif.unpack_request(bytes(buf)) == req


def test_response_layout() -> None:
    buf = bytearray(16)
    blkif.pack_response_into(buf, 0, Response(7, Op.READ, -2))
    assert buf[0:8] == (7).to_bytes(8, "little")
    assert buf[8] == 0
    assert buf[10:12] == (-2 & 0xFFFF).to_bytes(2, "little")
    assert blkif.unpack_response(bytes(buf)) == Response(7, 0, -2)


def test_discard_and_indirect_round_trip() -> None:
    buf = bytearray(112)
    d = DiscardRequest(id=3, sector=100, nr_sectors=2048, flag=1)
    blkif.pack_request_into(buf, 0, d)
    assert blkif.unpack_request(bytes(buf)) == d
    ind = IndirectRequest(indirect_op=Op.READ, id=9, sector=8, nr_segments=600,
                          indirect_grefs=(10, 11, 0, 0, 0, 0, 0, 0))
    blkif.pack_request_into(buf, 0, ind)
    assert buf[24:26] == (0).to_bytes(2, "little")  # handle
    assert buf[28:32] == (10).to_bytes(4, "little")
    assert blkif.unpack_request(bytes(buf)) == ind
    assert blkif.indirect_pages_for(600) == 2


def test_too_many_segments_cannot_be_packed() -> None:
    req = Request(op=Op.READ, id=1, segments=tuple(Segment(8, 0, 7) for _ in range(12)))
    with pytest.raises(RingProtocolError):
        blkif.pack_request_into(bytearray(112), 0, req)


def test_hostile_nr_segments_decodes_without_error() -> None:
    buf = bytearray(112)
    buf[0], buf[1] = Op.READ, 200
    req = blkif.unpack_request(bytes(buf))
    assert isinstance(req, Request)
    assert req.declared_segments == 200 and len(req.segments) == 11


def test_notify_rule_across_wrap() -> None:
    # the consumer asked to hear about index event; a push covering it notifies
    assert blkif.need_notify(new=5, old=4, event=5)
    assert not blkif.need_notify(new=6, old=5, event=5)
    assert blkif.need_notify(new=3, old=0xFFFFFFFE, event=0xFFFFFFFF)
    assert blkif.need_notify(new=3, old=0xFFFFFFFE, event=1)
    assert not blkif.need_notify(new=3, old=0xFFFFFFFE, event=4)


@settings(deadline=None, max_examples=200)
@given(st.integers(0, 2**32 - 1), st.integers(1, 32), st.integers(0, 40))
def test_notify_iff_event_within_published_range(old: int, count: int, ahead: int) -> None:
    new = (old + count) & 0xFFFFFFFF
    event = (old + ahead) & 0xFFFFFFFF
    assert blkif.need_notify(new, old, event) == (1 <= ahead <= count)
