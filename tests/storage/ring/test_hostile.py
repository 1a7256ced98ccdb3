"""A hostile frontend: every index, segment, grant and xenstore node it controls is checked."""
from __future__ import annotations

import asyncio
import struct

import pytest

from storage.rings import blkif
from storage.rings.blkback import BackendOptions
from storage.rings.blkfront import BlkFront
from storage.rings.blkif import DiscardRequest, IndirectRequest, Op, Request, Segment, Status
from storage.rings.hypervisor import XVDA
from storage.rings.xenstore import XenbusState, wait_for_state

from .conftest import DISK_SIZE, Host, RawFront, make_host

SECTORS = DISK_SIZE // 512


def rw_slot(op: int, rid: int, sector: int, segs: list[tuple[int, int, int]],
            nr: int | None = None) -> bytes:
    fields = [op, len(segs) if nr is None else nr, 0, rid, sector]
    for s in segs[:11]:
        fields += s
    fields += (0, 0, 0) * (11 - len(segs[:11]))
    return blkif.REQUEST.pack(*fields)


async def test_valid_raw_request_works(host: Host, raw: RawFront) -> None:
    _, gref = raw.page(readonly=True, fill=b"A" * 4096)
    rsp = await raw.submit(Request(Op.WRITE, 5, 8, (Segment(gref, 0, 7),)))
    assert (rsp.id, rsp.op, rsp.status) == (5, Op.WRITE, Status.OKAY)
    assert host.disk.read(8 * 512, 4096) == b"A" * 4096


@pytest.mark.parametrize("nr", [0, 12, 255])
async def test_bad_nr_segments(host: Host, raw: RawFront, nr: int) -> None:
    _, gref = raw.page(readonly=False)
    rsp = await raw.submit_slot(rw_slot(Op.READ, 1, 0, [(gref, 0, 7)] * 11, nr=nr))
    assert rsp.status == Status.ERROR and rsp.id == 1
    assert host.backend.stats.errors["bad-nr-segments"] == 1


@pytest.mark.parametrize(("first", "last"), [(3, 2), (0, 8), (8, 8), (255, 255), (7, 0)])
async def test_bad_segment_sectors(host: Host, raw: RawFront, first: int, last: int) -> None:
    _, gref = raw.page(readonly=True, fill=b"B" * 4096)
    rsp = await raw.submit_slot(rw_slot(Op.WRITE, 2, 0, [(gref, first, last)]))
    assert rsp.status == Status.ERROR
    assert host.backend.stats.errors["bad-segment"] == 1
    assert host.disk.read(0, 4096) == bytes(4096)


async def test_ungranted_and_misgranted_grefs(host: Host, raw: RawFront) -> None:
    pfn, ro = raw.page(readonly=True)
    _, other_dom = raw.page(readonly=False)
    host.guest.grants.end_access(other_dom)
    foreign = host.guest.grants.grant_access(pfn, 7, readonly=False)
    cases = [
        rw_slot(Op.READ, 1, 0, [(ro, 0, 7)]),  # backend must write into a read-only grant
        rw_slot(Op.READ, 2, 0, [(other_dom, 0, 7)]),  # revoked
        rw_slot(Op.READ, 3, 0, [(foreign, 0, 7)]),  # granted to domain 7
        rw_slot(Op.WRITE, 4, 0, [(0xFFFFFFFF, 0, 7)]),  # outside the table
        rw_slot(Op.WRITE, 5, 0, [(3, 0, 7)]),  # reserved, never granted
    ]
    for slot in cases:
        rsp = await raw.submit_slot(slot)
        assert rsp.status == Status.ERROR, rsp
    assert host.backend.stats.errors["bad-grant"] == len(cases)


async def test_one_bad_grant_means_no_partial_write(host: Host, raw: RawFront) -> None:
    _, good = raw.page(readonly=True, fill=b"G" * 4096)
    rsp = await raw.submit_slot(rw_slot(Op.WRITE, 1, 0, [(good, 0, 7), (99999, 0, 7)]))
    assert rsp.status == Status.ERROR
    assert host.disk.read(0, 8192) == bytes(8192)


@pytest.mark.parametrize("sector", [SECTORS - 7, SECTORS, 2**63, 2**64 - 1])
async def test_sector_past_the_end(host: Host, raw: RawFront, sector: int) -> None:
    _, gref = raw.page(readonly=True)
    rsp = await raw.submit_slot(rw_slot(Op.WRITE, 1, sector, [(gref, 0, 7)]))
    assert rsp.status == Status.ERROR
    rsp = await raw.submit(DiscardRequest(2, sector, 8))
    assert rsp.status == Status.ERROR
    assert host.backend.stats.errors["beyond-end"] == 2
    assert host.disk.size == DISK_SIZE


@pytest.mark.parametrize("op", [Op.WRITE_BARRIER, Op.RESERVED_1, 7, 0x80, 255])
async def test_unknown_op_is_unsupported(host: Host, raw: RawFront, op: int) -> None:
    rsp = await raw.submit_slot(bytes([op, 1]) + bytes(6) + struct.pack("<Q", 77))
    assert (rsp.id, rsp.op, rsp.status) == (77, op, Status.EOPNOTSUPP)


async def test_hostile_indirect_requests(host: Host, raw: RawFront) -> None:
    _, data = raw.page(readonly=False)
    table = blkif.pack_segments([Segment(data, 0, 7)])
    _, ind = raw.page(readonly=True, fill=table)
    good = IndirectRequest(Op.READ, 1, 0, 1, (ind,))
    assert (await raw.submit(good)).status == Status.OKAY
    bad = [
        IndirectRequest(Op.FLUSH_DISKCACHE, 2, 0, 1, (ind,)),  # not READ/WRITE
        IndirectRequest(Op.READ, 3, 0, 0, (ind,)),  # no segments
        IndirectRequest(Op.READ, 4, 0, 65, (ind,)),  # more than offered (64)
        IndirectRequest(Op.READ, 5, 0, 1, (12345,)),  # ungranted indirect page
        IndirectRequest(Op.READ, 6, SECTORS, 1, (ind,)),  # past the end
    ]
    for req in bad:
        assert (await raw.submit(req)).status == Status.ERROR, req
    _, bad_table = raw.page(readonly=True, fill=blkif.pack_segments([Segment(data, 5, 1)]))
    assert (await raw.submit(IndirectRequest(Op.READ, 7, 0, 1, (bad_table,)))).status == -1


async def test_indirect_refused_when_not_offered() -> None:
    h = await make_host(options=BackendOptions(max_indirect_segments=0))
    try:
        raw = RawFront(h.guest)
        await raw.connect()
        rsp = await raw.submit(IndirectRequest(Op.READ, 1, 0, 1, (8,)))
        assert rsp.status == Status.EOPNOTSUPP
    finally:
        await h.hv.close()


async def test_producer_too_far_ahead_disconnects(host: Host, raw: RawFront) -> None:
    blkif.write_u32(raw.sring.buf, blkif.REQ_PROD_OFF, 33)  # one more than the ring holds
    raw.evtchn.notify()
    back = f"/local/domain/0/backend/vbd/1/{XVDA}"
    async with asyncio.timeout(5):
        await wait_for_state(host.guest.xs, f"{back}/state",
                             {XenbusState.CLOSING, XenbusState.CLOSED})
    assert host.backend.stats.disconnects["ring-overflow"] == 1
    assert host.disk.read(0, DISK_SIZE) == bytes(DISK_SIZE)
    # the backend survives and serves an honest frontend afterwards
    await host.guest.xs.write(f"{raw.path}/state", str(int(XenbusState.CLOSED)))
    async with BlkFront(host.guest, XVDA) as front:
        await front.write(0, b"ok" * 256)
        assert await front.read(0, 512) == b"ok" * 256


@pytest.mark.parametrize("node", ["ring-ref", "event-channel"])
@pytest.mark.parametrize("value", ["9999", "-1", "banana", "99999999999999999999"])
async def test_hostile_xenstore_nodes_refuse_connection(host: Host, node: str,
                                                        value: str) -> None:
    g, xs = host.guest, host.guest.xs
    path = f"/local/domain/1/device/vbd/{XVDA}"
    back = f"/local/domain/0/backend/vbd/1/{XVDA}"
    await wait_for_state(xs, f"{back}/state", {XenbusState.INIT_WAIT})
    pfn = g.pages.alloc()
    gref = g.grants.grant_access(pfn, 0, readonly=False)
    port, _end = await g.alloc_unbound(0)
    await xs.write(f"{path}/ring-ref", str(gref))
    await xs.write(f"{path}/event-channel", str(port))
    await xs.write(f"{path}/{node}", value)
    await xs.write(f"{path}/state", str(int(XenbusState.INITIALISED)))
    async with asyncio.timeout(5):
        await wait_for_state(xs, f"{back}/state", {XenbusState.CLOSED})
    assert host.backend.stats.disconnects["bad-connect"] == 1
    assert host.backend.last_error


async def test_guest_may_not_write_backend_nodes(host: Host) -> None:
    from storage.rings.xenstore import XenStoreError

    with pytest.raises(XenStoreError):
        await host.guest.xs.write(f"/local/domain/0/backend/vbd/1/{XVDA}/sectors", "1")


async def _offer(host: Host, nodes: dict[str, str], *, ring_readonly: bool = False,
                 pages: list[int] | None = None) -> None:
    """Publish frontend nodes (after granting `pages` as ring pages) and go Initialised."""
    g, xs = host.guest, host.guest.xs
    path = f"/local/domain/1/device/vbd/{XVDA}"
    back = f"/local/domain/0/backend/vbd/1/{XVDA}"
    await wait_for_state(xs, f"{back}/state", {XenbusState.INIT_WAIT})
    grefs = [g.grants.grant_access(p, 0, readonly=ring_readonly) for p in pages or [100]]
    port, _ = await g.alloc_unbound(0)
    base = {"event-channel": str(port)}
    if len(grefs) == 1:
        base["ring-ref"] = str(grefs[0])
    else:
        base["ring-page-order"] = str(len(grefs).bit_length() - 1)
        base.update({f"ring-ref{i}": str(r) for i, r in enumerate(grefs)})
    for key, value in {**base, **nodes}.items():
        await xs.write(f"{path}/{key}", value)
    await xs.write(f"{path}/state", str(int(XenbusState.INITIALISED)))


async def _refused(host: Host) -> str:
    back = f"/local/domain/0/backend/vbd/1/{XVDA}"
    async with asyncio.timeout(5):
        await wait_for_state(host.guest.xs, f"{back}/state", {XenbusState.CLOSED})
    assert host.backend.stats.disconnects["bad-connect"] == 1
    assert host.backend.last_error is not None
    return host.backend.last_error


async def test_ring_pages_must_be_contiguous(host: Host) -> None:
    await _offer(host, {}, pages=[100, 102])
    assert "contiguous" in await _refused(host)


async def test_ring_page_order_beyond_offer(host: Host) -> None:
    await _offer(host, {}, pages=list(range(100, 108)))  # order 3 > max-ring-page-order 2
    assert "ring-page-order" in await _refused(host)


async def test_ring_page_granted_read_only(host: Host) -> None:
    await _offer(host, {}, ring_readonly=True)
    assert "read-only" in await _refused(host)


async def test_unknown_abi_refused(host: Host) -> None:
    await _offer(host, {"protocol": "x86_32-abi"})
    assert "ABI" in await _refused(host)


async def test_multi_page_ring_accepted(host: Host) -> None:
    await _offer(host, {}, pages=[200, 201, 202, 203])
    back = f"/local/domain/0/backend/vbd/1/{XVDA}"
    async with asyncio.timeout(5):
        await wait_for_state(host.guest.xs, f"{back}/state", {XenbusState.CONNECTED})
