"""blkfront: the guest's virtual block device, talking to blkback over a shared ring.

`BlkFront(guest, devid)` negotiates through xenstore (`connect()`), then offers async `read`,
`write`, `flush` and `discard` of any size and alignment. I/O is split into requests of up to
11 page segments (44 KiB) — or, when the backend offers `feature-max-indirect-segments`, into
indirect requests of up to that many segments — and as many requests as the ring has slots are
kept in flight. Every data page is granted to the backend for just one request (read-only for
writes), and revoked when the response arrives.

Unaligned writes read-modify-write their partial edge sectors under a lock, so two unaligned
writes never tear each other's edges (a sector-aligned write racing an unaligned one on the same
sector is ordered by whichever lands last, as on a real disk).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from storage.errors import RingProtocolError, StorageError
from storage.rings import blkif
from storage.rings.blkif import (
    PAGE_SIZE,
    SECTOR_SIZE,
    SECTORS_PER_PAGE,
    AnyRequest,
    DiscardRequest,
    IndirectRequest,
    Op,
    Request,
    Status,
)
from storage.rings.ring import (
    DomainMemory,
    EventChannel,
    EventChannelClosedError,
    FrontRing,
    GrantTable,
    PageAllocator,
    SharedRing,
)
from storage.rings.xenstore import XenbusState, Xs, read_int, wait_for_state


class BlkIOError(StorageError):
    """The backend answered a request with an error status."""


class GuestSide(Protocol):
    """What a frontend needs from its domain: memory, grants, xenstore, event channels."""

    domid: int
    memory: DomainMemory
    grants: GrantTable
    pages: PageAllocator
    xs: Xs

    async def alloc_unbound(self, remote_domid: int) -> tuple[int, EventChannel]:
        """Allocate an event channel port the remote domain may bind."""
        ...


@dataclass
class FrontendStats:
    """Counters of one frontend."""

    requests: int = 0
    indirect_requests: int = 0
    notifications_sent: int = 0
    wakeups: int = 0
    responses: int = 0
    errors: int = 0
    unknown_responses: int = 0


class _Held:
    """One request's ring slot, pages and grants; returned once the backend is done with them."""

    __slots__ = ("front", "grefs", "orphaned", "pages", "slots")

    def __init__(self, front: BlkFront, slots: asyncio.Semaphore) -> None:
        self.front = front
        self.slots = slots
        self.pages: list[int] = []
        self.grefs: list[int] = []
        self.orphaned = False

    def done(self) -> None:
        """The caller is finished: release now, unless the request is still on the ring."""
        if not self.orphaned:
            self.release()

    def release(self) -> None:
        """Revoke the grants, free the pages, give the ring slot back."""
        g = self.front.guest
        for gref in self.grefs:
            g.grants.end_access(gref)
        for pfn in self.pages:
            g.pages.free(pfn)
        self.grefs, self.pages = [], []
        self.slots.release()


class BlkFront:
    """The guest block device `devid` of `guest` (e.g. 51712 = xvda)."""

    def __init__(self, guest: GuestSide, devid: int, *, ring_page_order: int = 0,
                 use_indirect: bool = True) -> None:
        self.guest = guest
        self.devid = devid
        self.path = f"/local/domain/{guest.domid}/device/vbd/{devid}"
        self._want_order = ring_page_order
        self._use_indirect = use_indirect
        self.stats = FrontendStats()
        self.sectors = 0
        self.sector_size = SECTOR_SIZE
        self.read_only = False
        self.feature_flush = False
        self.feature_discard = False
        self.max_segments = blkif.MAX_SEGMENTS
        self.max_in_flight = 0
        self.backend_path = ""
        self.backend_domid = 0
        self._ring: FrontRing | None = None
        self._ring_pages: list[int] = []
        self._ring_grefs: list[int] = []
        self._evtchn: EventChannel | None = None
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._orphans: dict[int, Callable[[], None]] = {}  # cancelled callers' requests
        self._next_id = 0
        self._slots: asyncio.Semaphore | None = None
        self._rmw_lock = asyncio.Lock()
        self._rsp_task: asyncio.Task[None] | None = None
        self._broken: str | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def connect(self, *, wait_s: float = 10.0) -> None:
        """Run the xenbus handshake up to Connected."""
        async with asyncio.timeout(wait_s):
            await self._connect()

    async def _connect(self) -> None:
        xs, g = self.guest.xs, self.guest
        self.backend_path = await xs.read(f"{self.path}/backend") or ""
        if not self.backend_path:
            raise RingProtocolError(f"{self.path}/backend: no backend for this device")
        self.backend_domid = await read_int(xs, f"{self.path}/backend-id", default=0, hi=0x7FEF)
        await xs.write(f"{self.path}/state", str(int(XenbusState.INITIALISING)))
        bp = self.backend_path
        await wait_for_state(xs, f"{bp}/state", {XenbusState.INIT_WAIT})
        max_order = await read_int(xs, f"{bp}/max-ring-page-order", default=0, hi=8)
        order = min(self._want_order, max_order)
        indirect = await read_int(xs, f"{bp}/feature-max-indirect-segments", default=0,
                                  hi=blkif.MAX_INDIRECT_PAGES * blkif.SEGMENTS_PER_INDIRECT_PAGE)
        nr_pages = 1 << order
        self._ring_pages = g.pages.alloc_contiguous(nr_pages)
        first = self._ring_pages[0]
        ring_buf = g.memory.ram[first * PAGE_SIZE: (first + nr_pages) * PAGE_SIZE]
        sring = SharedRing(ring_buf, nr_pages)
        sring.init()
        self._ring = FrontRing(sring)
        self._ring_grefs = [g.grants.grant_access(p, self.backend_domid, readonly=False)
                            for p in self._ring_pages]
        # Budget guest pages: segments per request and requests in flight such that a full
        # ring never runs the guest out of free pages.
        budget = g.pages.available
        if self._use_indirect and indirect > blkif.MAX_SEGMENTS:
            self.max_segments = min(indirect, max(blkif.MAX_SEGMENTS,
                                                  budget // sring.nr_ents - 1))
        else:
            self.max_segments = blkif.MAX_SEGMENTS
        per_request = self.max_segments + (1 if self.max_segments > blkif.MAX_SEGMENTS else 0)
        self.max_in_flight = min(sring.nr_ents, budget // per_request)
        if self.max_in_flight < 1:
            raise RingProtocolError(f"domain {g.domid} has too little memory for a ring")
        self._slots = asyncio.Semaphore(self.max_in_flight)
        port, self._evtchn = await g.alloc_unbound(self.backend_domid)
        if nr_pages == 1:
            await xs.write(f"{self.path}/ring-ref", str(self._ring_grefs[0]))
        else:
            await xs.write(f"{self.path}/ring-page-order", str(order))
            for i, gref in enumerate(self._ring_grefs):
                await xs.write(f"{self.path}/ring-ref{i}", str(gref))
        await xs.write(f"{self.path}/event-channel", str(port))
        await xs.write(f"{self.path}/protocol", "x86_64-abi")
        await xs.write(f"{self.path}/state", str(int(XenbusState.INITIALISED)))
        state = await wait_for_state(xs, f"{bp}/state",
                                     {XenbusState.CONNECTED, XenbusState.CLOSING,
                                      XenbusState.CLOSED})
        if state != XenbusState.CONNECTED:
            raise RingProtocolError(f"backend {bp} refused the connection (state {state.name})")
        self.sectors = await read_int(xs, f"{bp}/sectors")
        self.sector_size = await read_int(xs, f"{bp}/sector-size", default=SECTOR_SIZE)
        if self.sector_size != SECTOR_SIZE:
            raise RingProtocolError(f"{bp}/sector-size {self.sector_size} unsupported")
        self.read_only = (await xs.read(f"{bp}/mode")) == "r"
        self.feature_flush = (await xs.read(f"{bp}/feature-flush-cache")) == "1"
        self.feature_discard = (await xs.read(f"{bp}/feature-discard")) == "1"
        self._rsp_task = asyncio.create_task(self._responses(), name=f"blkfront-{self.devid}")
        await xs.write(f"{self.path}/state", str(int(XenbusState.CONNECTED)))

    @property
    def size(self) -> int:
        """Disk size in bytes."""
        return self.sectors * SECTOR_SIZE

    async def close(self, *, wait_s: float = 5.0) -> None:
        """Close the device: Closing, wait for the backend to let go, Closed; free everything."""
        xs = self.guest.xs
        with contextlib.suppress(StorageError, TimeoutError):
            await xs.write(f"{self.path}/state", str(int(XenbusState.CLOSING)))
            if self.backend_path:
                async with asyncio.timeout(wait_s):
                    await wait_for_state(xs, f"{self.backend_path}/state",
                                         {XenbusState.CLOSING, XenbusState.CLOSED,
                                          XenbusState.UNKNOWN})
            await xs.write(f"{self.path}/state", str(int(XenbusState.CLOSED)))
        if self._rsp_task is not None:
            self._rsp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rsp_task
            self._rsp_task = None
        self._fail_pending("device closed")
        if self._evtchn is not None:
            self._evtchn.close()
            self._evtchn = None
        for gref in self._ring_grefs:
            self.guest.grants.end_access(gref)
        for pfn in self._ring_pages:
            self.guest.pages.free(pfn)
        self._ring_grefs, self._ring_pages, self._ring = [], [], None

    async def __aenter__(self) -> BlkFront:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail_pending(self, why: str) -> None:
        self._broken = self._broken or why
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BlkIOError(f"{self.path}: {why}"))
        self._pending.clear()
        for release in self._orphans.values():  # the ring is dead: nobody will answer them
            release()
        self._orphans.clear()

    # --- responses --------------------------------------------------------------------------
    async def _responses(self) -> None:
        ring, evtchn, pending, stats = self._ring, self._evtchn, self._pending, self.stats
        orphans = self._orphans
        assert ring is not None and evtchn is not None
        try:
            while True:
                n = ring.unconsumed_responses()
                if n > ring.nr_ents:
                    raise RingProtocolError(f"backend published {n} responses for a ring of "
                                            f"{ring.nr_ents}")
                for _ in range(n):
                    rsp = ring.take_response()
                    fut = pending.pop(rsp.id, None)
                    stats.responses += 1
                    if fut is None:
                        stats.unknown_responses += 1
                    elif not fut.done():
                        fut.set_result(rsp.status)
                    elif rsp.id in orphans:  # its caller was cancelled: release its resources
                        orphans.pop(rsp.id)()
                if n or ring.final_check_for_responses():
                    continue
                await evtchn.wait()
                stats.wakeups += 1
        except (RingProtocolError, EventChannelClosedError) as exc:
            self._fail_pending(f"backend broke the ring: {exc}")

    # --- requests ---------------------------------------------------------------------------
    def _post(self, build: Callable[[int], AnyRequest | tuple[int, int, list[int]]]
              ) -> tuple[int, asyncio.Future[int]]:
        """Put one request on the ring (the caller holds a slot); the future gets its status."""
        if self._broken:
            raise BlkIOError(f"{self.path}: {self._broken}")
        ring = self._ring
        if ring is None:
            raise BlkIOError(f"{self.path}: not connected")
        rid = self._next_id = (self._next_id + 1) & 0xFFFFFFFFFFFFFFFF
        req = build(rid)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if isinstance(req, tuple):  # (op, sector, flat segments): the READ/WRITE fast path
            ring.put_rw(req[0], rid, req[1], req[2])
        else:
            ring.put_request(req)
        self.stats.requests += 1
        if ring.push_requests():
            self._evtchn.notify()  # type: ignore[union-attr]
            self.stats.notifications_sent += 1
        return rid, fut

    async def _status(self, rid: int, fut: asyncio.Future[int], held: _Held) -> int:
        """Wait for a response. If the caller is cancelled first, the request stays on the
        ring: its slot, pages and grants go back only when the backend has answered."""
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.cancelled() and not self._broken:
                held.orphaned = True
                self._orphans[rid] = held.release
            raise

    def _raise_for(self, status: int, what: str) -> None:
        self.stats.errors += 1
        reason = {Status.EOPNOTSUPP: "not supported"}.get(status, "I/O error")
        ro = " (read-only device)" if self.read_only and what.startswith(("write", "disc")) \
            else ""
        raise BlkIOError(f"{self.path}: {what}: {reason}{ro} (status {status})")

    async def _hold(self) -> _Held:
        """A ring slot (and, later, pages and grants) for one request."""
        if self._slots is None:
            raise BlkIOError(f"{self.path}: not connected")
        await self._slots.acquire()
        return _Held(self, self._slots)

    async def _one(self, build: Callable[[int], AnyRequest], *, what: str) -> None:
        """A request without data pages (flush, discard)."""
        held = await self._hold()
        try:
            status = await self._status(*self._post(build), held)
        finally:
            held.done()
        if status != Status.OKAY:
            self._raise_for(status, what)

    async def _read_small(self, sector: int, nsect: int, skip: int, length: int) -> bytes:
        """A read within one page (≤ 8 sectors): one segment, data copied out once."""
        g = self.guest
        held = await self._hold()
        try:
            pfn = g.pages.alloc()
            held.pages.append(pfn)
            gref = g.grants.grant_access(pfn, self.backend_domid, readonly=False)
            held.grefs.append(gref)
            rid, fut = self._post(lambda rid: (Op.READ, sector, [gref, 0, nsect - 1]))
            status = await self._status(rid, fut, held)
            if status != Status.OKAY:
                self._raise_for(status, f"read of {nsect} sectors at sector {sector}")
            return bytes(g.memory.page(pfn)[skip: skip + length])
        finally:
            held.done()

    async def _transfer(self, op: int, sector: int, nsect: int, view: memoryview) -> None:
        """One request moving `nsect` sectors between the disk and `view` (sector-aligned)."""
        g, bdom = self.guest, self.backend_domid
        write = op == Op.WRITE
        npages = -(-nsect // SECTORS_PER_PAGE)
        held = await self._hold()  # a ring slot first: guest pages are budgeted per slot
        pages, grefs = held.pages, held.grefs
        try:
            for _ in range(npages):
                pages.append(g.pages.alloc())
            flat: list[int] = []
            left = nsect
            page = g.memory.page
            for i, pfn in enumerate(pages):
                n = min(SECTORS_PER_PAGE, left)
                left -= n
                if write:
                    page(pfn)[: n * SECTOR_SIZE] = \
                        view[i * PAGE_SIZE: i * PAGE_SIZE + n * SECTOR_SIZE]
                gref = g.grants.grant_access(pfn, bdom, readonly=write)
                grefs.append(gref)
                flat += (gref, 0, n - 1)
            if npages <= blkif.MAX_SEGMENTS:
                rid, fut = self._post(lambda rid: (op, sector, flat))
            else:
                table = blkif.pack_segment_table(flat)
                igrefs = []
                for k in range(blkif.indirect_pages_for(npages)):
                    pfn = g.pages.alloc()
                    pages.append(pfn)
                    chunk = table[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
                    page(pfn)[: len(chunk)] = chunk
                    gref = g.grants.grant_access(pfn, bdom, readonly=True)
                    grefs.append(gref)
                    igrefs.append(gref)
                self.stats.indirect_requests += 1
                rid, fut = self._post(lambda rid: IndirectRequest(op, rid, sector, npages,
                                                                  tuple(igrefs)))
            status = await self._status(rid, fut, held)
            if status != Status.OKAY:
                name = "write" if write else "read"
                self._raise_for(status, f"{name} of {nsect} sectors at sector {sector}")
            if not write:
                for i, pfn in enumerate(pages[:npages]):
                    n = min(SECTORS_PER_PAGE, nsect - i * SECTORS_PER_PAGE) * SECTOR_SIZE
                    view[i * PAGE_SIZE: i * PAGE_SIZE + n] = page(pfn)[:n]
        finally:
            held.done()

    async def _sectors_io(self, op: int, sector: int, view: memoryview) -> None:
        """Move whole sectors, split into requests of at most `max_segments` pages, in flight
        together."""
        nsect = len(view) // SECTOR_SIZE
        per = self.max_segments * SECTORS_PER_PAGE
        if nsect <= per:
            await self._transfer(op, sector, nsect, view)
            return
        chunks = []
        for s in range(0, nsect, per):
            n = min(per, nsect - s)
            chunks.append(self._transfer(op, sector + s, n, view[s * SECTOR_SIZE:
                                                                   (s + n) * SECTOR_SIZE]))
        results = await asyncio.gather(*chunks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BlkIOError(f"{self.path}: range {offset}+{length} outside the "
                             f"{self.size}-byte disk")

    async def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at byte `offset` (any alignment)."""
        self._check(offset, length)
        if length == 0:
            return b""
        first = offset // SECTOR_SIZE
        end = -(-(offset + length) // SECTOR_SIZE)
        if end - first <= SECTORS_PER_PAGE:
            return await self._read_small(first, end - first, offset - first * SECTOR_SIZE,
                                          length)
        buf = bytearray((end - first) * SECTOR_SIZE)
        if end - first <= SECTORS_PER_PAGE * self.max_segments:
            await self._transfer(Op.READ, first, end - first, memoryview(buf))
        else:
            await self._sectors_io(Op.READ, first, memoryview(buf))
        skip = offset - first * SECTOR_SIZE
        return bytes(buf[skip: skip + length])

    async def write(self, offset: int, data: bytes) -> None:
        """Write `data` at byte `offset` (any alignment; partial sectors are read-modify-write)."""
        self._check(offset, len(data))
        if not data:
            return
        if offset % SECTOR_SIZE == 0 and len(data) % SECTOR_SIZE == 0:
            await self._sectors_io(Op.WRITE, offset // SECTOR_SIZE, memoryview(data))
            return
        async with self._rmw_lock:
            first = offset // SECTOR_SIZE
            end = -(-(offset + len(data)) // SECTOR_SIZE)
            buf = bytearray((end - first) * SECTOR_SIZE)
            head = offset - first * SECTOR_SIZE
            if head or end - first == 1:
                buf[:SECTOR_SIZE] = await self.read(first * SECTOR_SIZE, SECTOR_SIZE)
            if end - first > 1 and (offset + len(data)) % SECTOR_SIZE:
                buf[-SECTOR_SIZE:] = await self.read((end - 1) * SECTOR_SIZE, SECTOR_SIZE)
            buf[head: head + len(data)] = data
            await self._sectors_io(Op.WRITE, first, memoryview(buf))

    async def flush(self) -> None:
        """Make every write that completed before this call durable (FLUSH_DISKCACHE)."""
        if not self.feature_flush:
            raise BlkIOError(f"{self.path}: backend offers no feature-flush-cache")
        await self._one(lambda rid: Request(Op.FLUSH_DISKCACHE, rid), what="flush")

    async def discard(self, offset: int, length: int) -> tuple[int, int]:
        """Tell the backend the whole sectors inside the byte range are unused; returns
        `(first sector, sectors discarded)`."""
        self._check(offset, length)
        if not self.feature_discard:
            raise BlkIOError(f"{self.path}: backend offers no feature-discard")
        first = -(-offset // SECTOR_SIZE)
        end = (offset + length) // SECTOR_SIZE
        if end <= first:
            return first, 0
        await self._one(lambda rid: DiscardRequest(rid, first, end - first),
                           what=f"discard of {end - first} sectors at sector {first}")
        return first, end - first
