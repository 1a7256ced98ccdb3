"""The shared-memory machinery under a split driver: domain memory, grants, rings, event channels.

Who does what, as in Xen:
- `DomainMemory` is a guest's RAM (plus its grant table): a bytearray in-process, or a
  `multiprocessing.shared_memory` segment the host creates and the guest process attaches to.
- The guest (frontend) hands pages to the backend with `GrantTable.grant_access`; the backend can
  reach guest memory only through `GrantMapper.map`, which checks the grant entry (permitted, for
  this backend domain, within the guest's RAM, read-only respected) every time.
- `FrontRing` / `BackRing` are the two private halves of a `SharedRing` laid out as in
  `io/ring.h`; they publish with the notify-only-when-needed rule and re-arm-and-recheck before
  sleeping. `BackRing` treats the shared indices as hostile.
- Event channels carry "something changed" between the halves: `local_event_channel_pair()`
  (asyncio, same loop) or `SocketEventChannel` (a socketpair or unix socket, across processes).
"""
from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import socket
import struct
import sys
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Protocol

from storage.errors import RingProtocolError
from storage.rings import blkif
from storage.rings.blkif import PAGE_SIZE, U32


class GrantError(RingProtocolError):
    """A grant reference the backend may not use (not granted, other domain, read-only, bogus)."""


class RingOverflowError(RingProtocolError):
    """The other end's producer index claims more entries than the ring can hold."""


class EventChannelClosedError(RingProtocolError):
    """The peer of an event channel went away."""


# --- domain memory and grants -----------------------------------------------------------------
GRANT_ENTRY = struct.Struct("<HHI")  # grant_entry_v1: u16 flags, u16 domid, u32 frame
GTF_PERMIT_ACCESS = 0x1
GTF_READONLY = 0x4
GRANTS_PER_PAGE = PAGE_SIZE // GRANT_ENTRY.size  # 512
RESERVED_GREFS = 8  # GNTTAB_NR_RESERVED_ENTRIES: the toolstack's, never handed out


class DomainMemory:
    """A guest's memory: `grant_pages` pages of grant table, then `ram_pages` pages of RAM.

    Create with `DomainMemory.local(...)` (a bytearray) or `DomainMemory.shared(...)` (a named
    shared-memory segment another process can `attach` to). Use as a context manager.
    """

    def __init__(self, buf: memoryview, *, ram_pages: int, grant_pages: int,
                 shm: shared_memory.SharedMemory | None = None, owner: bool = True) -> None:
        if len(buf) < (ram_pages + grant_pages) * PAGE_SIZE:
            raise RingProtocolError("domain memory buffer smaller than its page counts")
        self.ram_pages = ram_pages
        self.grant_pages = grant_pages
        self._shm = shm
        self._owner = owner
        self._mmap: mmap.mmap | None = None
        self._attached_name: str | None = None
        self._buf = buf
        self.grant_buf = buf[: grant_pages * PAGE_SIZE]
        self.ram = buf[grant_pages * PAGE_SIZE: (grant_pages + ram_pages) * PAGE_SIZE]

    @classmethod
    def local(cls, ram_pages: int, *, grant_pages: int = 4) -> DomainMemory:
        """Memory in this process (frontend and backend share the loop)."""
        return cls(memoryview(bytearray((ram_pages + grant_pages) * PAGE_SIZE)),
                   ram_pages=ram_pages, grant_pages=grant_pages)

    @classmethod
    def shared(cls, ram_pages: int, *, grant_pages: int = 4) -> DomainMemory:
        """Memory in a new shared-memory segment (named by `.name`), owned by this process."""
        shm = shared_memory.SharedMemory(create=True, size=(ram_pages + grant_pages) * PAGE_SIZE)
        return cls(shm.buf, ram_pages=ram_pages, grant_pages=grant_pages, shm=shm)

    @classmethod
    def attach(cls, name: str, *, ram_pages: int, grant_pages: int) -> DomainMemory:
        """Map a segment another process created; this process never unlinks it.

        Mapped with mmap rather than `SharedMemory(name=...)`: before Python 3.13 the latter
        registers the segment with the resource tracker, which then unlinks the creator's
        segment when this process exits (or, for a multiprocessing child sharing the tracker,
        forgets the creator's registration).
        """
        import _posixshmem

        try:
            fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
        except FileNotFoundError as exc:
            raise RingProtocolError(f"shared memory {name!r} does not exist") from exc
        try:
            size = os.fstat(fd).st_size
            if size < (ram_pages + grant_pages) * PAGE_SIZE:
                raise RingProtocolError(f"shared memory {name!r} is only {size} bytes")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        mem = cls(memoryview(mm), ram_pages=ram_pages, grant_pages=grant_pages, owner=False)
        mem._mmap = mm
        mem._attached_name = name
        return mem

    @property
    def name(self) -> str | None:
        """The shared-memory segment's name (None for local memory)."""
        return self._shm.name if self._shm else self._attached_name

    def page(self, pfn: int) -> memoryview:
        """RAM page `pfn` (guest-side access: no grant needed for one's own memory)."""
        if not 0 <= pfn < self.ram_pages:
            raise RingProtocolError(f"page {pfn} outside guest RAM of {self.ram_pages} pages")
        return self.ram[pfn * PAGE_SIZE: (pfn + 1) * PAGE_SIZE]

    def close(self) -> None:
        """Release the mapping (and unlink the segment if this process created it).

        Views into the memory that others still hold (a ring, a mapped grant) keep the mapping
        alive until they go; the segment's name is removed at once either way.
        """
        for view in (self.grant_buf, self.ram, self._buf):
            view.release()
        if self._mmap is not None:
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
        if self._shm is not None:
            shm, self._shm = self._shm, None
            try:
                shm.close()
            except BufferError:  # views still alive: let the mapping go with the last of them
                shm._mmap = None  # type: ignore[attr-defined]
                with contextlib.suppress(OSError):
                    os.close(shm._fd)  # type: ignore[attr-defined]
                shm._fd = -1  # type: ignore[attr-defined]
            if self._owner:
                with contextlib.suppress(FileNotFoundError):
                    shm.unlink()

    def __enter__(self) -> DomainMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PageAllocator:
    """The guest's free RAM pages (a stack, so recently freed pages are reused first)."""

    def __init__(self, ram_pages: int, *, start: int = 0) -> None:
        self._free = list(range(ram_pages - 1, start - 1, -1))

    def alloc(self) -> int:
        """One free page number."""
        if not self._free:
            raise RingProtocolError("guest out of free pages")
        return self._free.pop()

    def alloc_contiguous(self, count: int) -> list[int]:
        """`count` consecutive pages (used once at setup for the ring itself)."""
        free = sorted(self._free)
        for i in range(len(free) - count + 1):
            if free[i + count - 1] - free[i] == count - 1:
                run = free[i: i + count]
                taken = set(run)
                self._free = [p for p in self._free if p not in taken]
                return run
        raise RingProtocolError(f"no {count} contiguous free pages")

    def free(self, pfn: int) -> None:
        """Return a page."""
        self._free.append(pfn)

    @property
    def available(self) -> int:
        """Free pages left."""
        return len(self._free)


class GrantTable:
    """The guest's side of its grant table: grant and revoke access to its own pages."""

    def __init__(self, memory: DomainMemory) -> None:
        self._buf = memory.grant_buf
        self.nr_entries = memory.grant_pages * GRANTS_PER_PAGE
        self._ram_pages = memory.ram_pages
        self._free = list(range(self.nr_entries - 1, RESERVED_GREFS - 1, -1))
        self._buf[:] = bytes(len(self._buf))  # a booting guest starts with no grants

    def grant_access(self, pfn: int, domid: int, *, readonly: bool) -> int:
        """Let domain `domid` map page `pfn`; returns the grant reference."""
        if not self._free:
            raise GrantError("grant table full")
        gref = self._free.pop()
        flags = GTF_PERMIT_ACCESS | (GTF_READONLY if readonly else 0)
        GRANT_ENTRY.pack_into(self._buf, gref * GRANT_ENTRY.size, flags, domid, pfn)
        return gref

    def end_access(self, gref: int) -> None:
        """Revoke a grant and recycle its reference."""
        GRANT_ENTRY.pack_into(self._buf, gref * GRANT_ENTRY.size, 0, 0, 0)
        self._free.append(gref)

    @property
    def in_use(self) -> int:
        """Grants currently handed out."""
        return self.nr_entries - RESERVED_GREFS - len(self._free)


class GrantMapper:
    """The backend's only way into guest memory: map a grant reference, checked each time.

    The grant table lives in guest memory, so every field is hostile: the entry must be
    permitted, for `backend_domid`, name a frame inside the guest's RAM, and allow writing if
    the backend is going to write.
    """

    def __init__(self, memory: DomainMemory, backend_domid: int) -> None:
        self._table = memory.grant_buf
        self._nr = memory.grant_pages * GRANTS_PER_PAGE
        self._ram = memory.ram
        self._ram_pages = memory.ram_pages
        self.domid = backend_domid
        self.maps = 0

    def frame(self, gref: int, *, write: bool) -> int:
        """Validate `gref` for this backend and return the guest frame it names."""
        if not 0 <= gref < self._nr:
            raise GrantError(f"gref {gref} outside the grant table ({self._nr} entries)")
        flags, domid, frame = GRANT_ENTRY.unpack_from(self._table, gref * GRANT_ENTRY.size)
        if not flags & GTF_PERMIT_ACCESS:
            raise GrantError(f"gref {gref} is not granted")
        if domid != self.domid:
            raise GrantError(f"gref {gref} is granted to domain {domid}, not {self.domid}")
        if write and flags & GTF_READONLY:
            raise GrantError(f"gref {gref} is read-only")
        if frame >= self._ram_pages:
            raise GrantError(f"gref {gref} names frame {frame} outside guest RAM")
        return frame

    def map(self, gref: int, *, write: bool) -> memoryview:
        """The granted 4 KiB page as a memoryview."""
        frame = self.frame(gref, write=write)
        self.maps += 1
        return self._ram[frame * PAGE_SIZE: (frame + 1) * PAGE_SIZE]

    def map_contiguous(self, grefs: list[int], *, write: bool) -> memoryview:
        """Several granted pages that must be consecutive frames (a multi-page ring)."""
        frames = [self.frame(g, write=write) for g in grefs]
        if frames != list(range(frames[0], frames[0] + len(frames))):
            raise GrantError(f"ring pages {frames} are not contiguous guest frames")
        self.maps += len(frames)
        return self._ram[frames[0] * PAGE_SIZE: (frames[-1] + 1) * PAGE_SIZE]


# --- rings ------------------------------------------------------------------------------------
if sys.byteorder != "little":  # the ring is the x86-64 ABI; native u32 items must be little-endian
    raise ImportError("storage.rings.ring needs a little-endian host")
_REQ_PROD, _REQ_EVENT, _RSP_PROD, _RSP_EVENT = (o // 4 for o in (
    blkif.REQ_PROD_OFF, blkif.REQ_EVENT_OFF, blkif.RSP_PROD_OFF, blkif.RSP_EVENT_OFF))


class SharedRing:
    """The shared ring pages (`io/ring.h` sring): header then `nr_ents` 112-byte slots."""

    def __init__(self, buf: memoryview, nr_pages: int) -> None:
        if len(buf) < nr_pages * PAGE_SIZE:
            raise RingProtocolError("ring buffer smaller than its page count")
        self.buf = buf
        self.nr_pages = nr_pages
        self.nr_ents = blkif.ring_slots(nr_pages)
        # The four indices as native u32 items: each read or write is one aligned 4-byte
        # access. struct's little-endian codecs move one byte at a time, so the other process
        # could see a half-updated index (seen: rsp_prod 7573 "behind" the consumer).
        self.idx = buf[:16].cast("I")

    def init(self) -> None:
        """SHARED_RING_INIT: producers 0, events 1, padding zeroed (the frontend does this)."""
        blkif.HEADER.pack_into(self.buf, 0, 0, 1, 0, 1)

    def header(self) -> tuple[int, int, int, int]:
        """(req_prod, req_event, rsp_prod, rsp_event) as currently in the page."""
        return blkif.HEADER.unpack_from(self.buf, 0)

    def slot(self, index: int) -> int:
        """Byte offset of the slot a free-running index refers to."""
        return blkif.HEADER_SIZE + (index & (self.nr_ents - 1)) * blkif.SLOT_SIZE


class FrontRing:
    """The frontend's half: produces requests, consumes responses."""

    def __init__(self, sring: SharedRing) -> None:
        self.sring = sring
        self.buf = sring.buf
        self.idx = sring.idx
        self.nr_ents = sring.nr_ents
        self.req_prod_pvt = 0
        self.rsp_cons = 0

    def free_requests(self) -> int:
        """Slots the frontend may still fill."""
        return self.nr_ents - ((self.req_prod_pvt - self.rsp_cons) & U32)

    def put_request(self, req: blkif.AnyRequest) -> None:
        """Write a request into the next private slot (not visible until `push_requests`)."""
        if self.free_requests() <= 0:
            raise RingProtocolError("ring full")
        blkif.pack_request_into(self.buf, self.sring.slot(self.req_prod_pvt), req)
        self.req_prod_pvt = (self.req_prod_pvt + 1) & U32

    def put_rw(self, op: int, rid: int, sector: int, flat: list[int]) -> None:
        """`put_request` for a READ/WRITE given as flat (gref, first, last, ...) triples."""
        if self.free_requests() <= 0:
            raise RingProtocolError("ring full")
        blkif.pack_rw_into(self.buf, self.sring.slot(self.req_prod_pvt), op, rid, sector, flat)
        self.req_prod_pvt = (self.req_prod_pvt + 1) & U32

    def push_requests(self) -> bool:
        """Publish private requests; True iff the backend asked to be notified of them."""
        idx = self.idx
        old = idx[_REQ_PROD]
        new = self.req_prod_pvt
        idx[_REQ_PROD] = new
        return blkif.need_notify(new, old, idx[_REQ_EVENT])

    def unconsumed_responses(self) -> int:
        """Responses published but not yet taken."""
        return (self.idx[_RSP_PROD] - self.rsp_cons) & U32

    def take_response(self) -> blkif.Response:
        """The next response (caller checked `unconsumed_responses`)."""
        rsp = blkif.unpack_response(self.buf, self.sring.slot(self.rsp_cons))
        self.rsp_cons = (self.rsp_cons + 1) & U32
        return rsp

    def final_check_for_responses(self) -> bool:
        """Re-arm `rsp_event` and look once more; True means do not sleep."""
        if self.unconsumed_responses():
            return True
        self.idx[_RSP_EVENT] = (self.rsp_cons + 1) & U32
        return bool(self.unconsumed_responses())


class BackRing:
    """The backend's half: consumes requests, produces responses. Shared indices are hostile."""

    def __init__(self, sring: SharedRing) -> None:
        self.sring = sring
        self.buf = sring.buf
        self.idx = sring.idx
        self.nr_ents = sring.nr_ents
        self.rsp_prod_pvt = 0
        self.req_cons = 0

    def unconsumed_requests(self) -> int:
        """Requests ready to take, bounded by the free response space.

        Raises `RingOverflowError` if the frontend's `req_prod` is more than a ring ahead of the
        responses (RING_REQUEST_PROD_OVERFLOW): such a frontend must be disconnected.
        """
        prod = self.idx[_REQ_PROD]
        if ((prod - self.rsp_prod_pvt) & U32) > self.nr_ents:
            raise RingOverflowError(
                f"req_prod {prod} is more than {self.nr_ents} ahead of "
                f"rsp_prod {self.rsp_prod_pvt}")
        req = (prod - self.req_cons) & U32
        space = self.nr_ents - ((self.req_cons - self.rsp_prod_pvt) & U32)
        return min(req, space)

    def take_request(self) -> bytes:
        """A private copy of the next request slot (the frontend can't change it under us)."""
        off = self.sring.slot(self.req_cons)
        self.req_cons = (self.req_cons + 1) & U32
        return bytes(self.buf[off: off + blkif.SLOT_SIZE])

    def put_response(self, rsp: blkif.Response) -> None:
        """Write a response into the next private slot."""
        blkif.pack_response_into(self.buf, self.sring.slot(self.rsp_prod_pvt), rsp)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & U32

    def push_responses(self) -> bool:
        """Publish responses; True iff the frontend asked to be notified of them."""
        idx = self.idx
        old = idx[_RSP_PROD]
        new = self.rsp_prod_pvt
        idx[_RSP_PROD] = new
        return blkif.need_notify(new, old, idx[_RSP_EVENT])

    def final_check_for_requests(self) -> bool:
        """Re-arm `req_event` and look once more; True means do not sleep."""
        if self.unconsumed_requests():
            return True
        self.idx[_REQ_EVENT] = (self.req_cons + 1) & U32
        return bool(self.unconsumed_requests())


# --- event channels ---------------------------------------------------------------------------
class EventChannel(Protocol):
    """One end of an interdomain event channel: a coalescing "pending" bit plus a wake-up."""

    sent: int
    received: int

    def notify(self) -> None:
        """Mark the peer's end pending and wake it."""
        ...

    async def wait(self) -> None:
        """Sleep until this end is pending, then clear it."""
        ...

    def close(self) -> None:
        """Unbind; a waiting peer gets `EventChannelClosedError`."""
        ...


class LocalEventChannel:
    """In-process end: both halves live on the same asyncio loop."""

    def __init__(self) -> None:
        self.peer: LocalEventChannel | None = None
        self._event = asyncio.Event()
        self._closed = False
        self.sent = 0
        self.received = 0

    def notify(self) -> None:
        """Set the peer pending."""
        self.sent += 1
        if self.peer is not None:
            self.peer._event.set()

    async def wait(self) -> None:
        """Wait for pending, clear it."""
        await self._event.wait()
        self._event.clear()
        if self._closed:
            raise EventChannelClosedError("event channel closed")
        self.received += 1

    def close(self) -> None:
        """Unbind both ends."""
        for end in (self, self.peer):
            if end is not None:
                end._closed = True
                end._event.set()


def local_event_channel_pair() -> tuple[LocalEventChannel, LocalEventChannel]:
    """Two connected in-process ends."""
    a, b = LocalEventChannel(), LocalEventChannel()
    a.peer, b.peer = b, a
    return a, b


class SocketEventChannel:
    """Cross-process end over a stream socket: a byte means "pending"; bytes coalesce."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.sent = 0
        self.received = 0

    def notify(self) -> None:
        """Send one byte (if the socket is full the peer is already pending)."""
        self.sent += 1
        with contextlib.suppress(BlockingIOError, InterruptedError):
            try:
                self.sock.send(b"!")
            except OSError as exc:
                raise EventChannelClosedError(f"event channel peer gone: {exc}") from exc

    async def wait(self) -> None:
        """Wait until at least one byte arrived, then drain them all."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                fut = loop.create_future()
                fd = self.sock.fileno()
                loop.add_reader(fd, _set_if_pending, fut)
                try:
                    await fut
                finally:
                    loop.remove_reader(fd)
                continue
            except OSError as exc:
                raise EventChannelClosedError(f"event channel peer gone: {exc}") from exc
            if not data:
                raise EventChannelClosedError("event channel peer closed")
            self.received += 1
            return

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


EventChannelBinder = Callable[[int], EventChannel]
"""Bind the backend's end of the event channel the frontend allocated (its port number)."""


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def socket_event_channel_pair() -> tuple[SocketEventChannel, SocketEventChannel]:
    """Two connected ends on a socketpair (inheritable by a child process)."""
    a, b = socket.socketpair()
    return SocketEventChannel(a), SocketEventChannel(b)
