"""Shared ring halves, grants and event channels."""
from __future__ import annotations

import asyncio

import pytest

from storage.rings import blkif
from storage.rings.blkif import Op, Request, Response, Segment
from storage.rings.ring import (
    BackRing,
    DomainMemory,
    FrontRing,
    GrantError,
    GrantMapper,
    GrantTable,
    RingOverflowError,
    SharedRing,
    local_event_channel_pair,
    socket_event_channel_pair,
)


def make_ring() -> tuple[FrontRing, BackRing, SharedRing]:
    sring = SharedRing(memoryview(bytearray(4096)), 1)
    sring.init()
    return FrontRing(sring), BackRing(sring), sring


def test_requests_and_responses_flow_with_suppressed_notifications() -> None:
    front, back, sring = make_ring()
    assert sring.header() == (0, 1, 0, 1)
    front.put_request(Request(Op.READ, 1, 0, (Segment(8, 0, 7),)))
    assert front.push_requests()  # backend armed req_event=1
    front.put_request(Request(Op.READ, 2, 8, (Segment(9, 0, 7),)))
    assert not front.push_requests()  # backend has not re-armed: no second notification
    assert back.unconsumed_requests() == 2
    ids = [blkif.unpack_request(back.take_request()).id for _ in range(2)]
    assert ids == [1, 2]
    assert not back.final_check_for_requests()
    assert sring.header()[1] == 3  # req_event = req_cons + 1
    for i in ids:
        back.put_response(Response(i, Op.READ, 0))
    assert back.push_responses()
    assert front.unconsumed_responses() == 2
    assert [front.take_response().id for _ in range(2)] == [1, 2]
    assert not front.final_check_for_responses()


def test_free_running_indices_wrap_u32() -> None:
    front, back, sring = make_ring()
    start = 0xFFFFFFF0
    front.req_prod_pvt = front.rsp_cons = back.req_cons = back.rsp_prod_pvt = start
    blkif.HEADER.pack_into(sring.buf, 0, start, start + 1, start, start + 1)
    for i in range(40):
        front.put_request(Request(Op.READ, i, 0, ()))
        front.push_requests()
        assert back.unconsumed_requests() == 1
        assert blkif.unpack_request(back.take_request()).id == i
        back.put_response(Response(i, 0, 0))
        back.push_responses()
        assert front.take_response().id == i
    assert front.req_prod_pvt == (start + 40) & 0xFFFFFFFF


def test_ring_full_and_producer_overflow() -> None:
    front, back, sring = make_ring()
    for i in range(32):
        front.put_request(Request(Op.READ, i))
    assert front.free_requests() == 0
    with pytest.raises(Exception, match="ring full"):
        front.put_request(Request(Op.READ, 99))
    blkif.write_u32(sring.buf, blkif.REQ_PROD_OFF, 33)  # hostile: one more than fits
    with pytest.raises(RingOverflowError):
        back.unconsumed_requests()
    blkif.write_u32(sring.buf, blkif.REQ_PROD_OFF, 0xFFFFFFFF)  # "behind" = far ahead in u32
    with pytest.raises(RingOverflowError):
        back.unconsumed_requests()


def test_grants_checked_on_every_map() -> None:
    with DomainMemory.local(16, grant_pages=1) as mem:
        table, mapper = GrantTable(mem), GrantMapper(mem, backend_domid=0)
        g = table.grant_access(3, 0, readonly=True)
        mem.page(3)[:4] = b"abcd"
        assert bytes(mapper.map(g, write=False)[:4]) == b"abcd"
        with pytest.raises(GrantError, match="read-only"):
            mapper.map(g, write=True)
        other = table.grant_access(4, 7, readonly=False)
        with pytest.raises(GrantError, match="domain 7"):
            mapper.map(other, write=False)
        table.end_access(g)
        with pytest.raises(GrantError, match="not granted"):
            mapper.map(g, write=False)
        with pytest.raises(GrantError, match="outside the grant table"):
            mapper.map(10_000, write=False)
        bogus = table.grant_access(999, 0, readonly=False)  # frame beyond guest RAM
        with pytest.raises(GrantError, match="outside guest RAM"):
            mapper.map(bogus, write=False)


def test_shared_memory_attach_sees_same_bytes() -> None:
    with DomainMemory.shared(4, grant_pages=1) as mem:
        assert mem.name
        other = DomainMemory.attach(mem.name, ram_pages=4, grant_pages=1)
        mem.page(2)[:3] = b"xyz"
        assert bytes(other.page(2)[:3]) == b"xyz"
        other.close()


async def test_local_event_channel_coalesces() -> None:
    a, b = local_event_channel_pair()
    a.notify()
    a.notify()
    await asyncio.wait_for(b.wait(), 10)
    assert a.sent == 2 and b.received == 1
    waiter = asyncio.create_task(b.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    a.notify()
    await asyncio.wait_for(waiter, 10)


async def test_socket_event_channel() -> None:
    a, b = socket_event_channel_pair()
    try:
        waiter = asyncio.create_task(b.wait())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        a.notify()
        a.notify()
        await asyncio.wait_for(waiter, 10)
        b.notify()
        await asyncio.wait_for(a.wait(), 10)
    finally:
        a.close()
        b.close()


def test_shared_memory_closes_while_views_live() -> None:
    """A host tearing a domain down while a ring view is still referenced must not fail, and
    the segment's name must be gone."""
    import os

    mem = DomainMemory.shared(4, grant_pages=1)
    name = mem.name
    ring = SharedRing(mem.page(0), 1)
    other = DomainMemory.attach(name, ram_pages=4, grant_pages=1)
    page = other.page(1)
    other.close()
    mem.close()
    assert not os.path.exists(f"/dev/shm/{name}")
    ring.init()  # the mapping lives on with its last view
    page[0] = 1
