"""blkback: the host side of a virtual block device, serving one VBD from any `BlockDevice`.

The backend publishes its features in xenstore, waits for the frontend's ring and event channel,
then answers requests until the frontend closes. Everything the frontend controls — the shared
ring's indices and slots, segments, grant references, the indirect pages, even its xenstore
nodes — is treated as hostile:

- a producer index more than a ring ahead → the device is disconnected (the ring can't be
  trusted any more);
- an unknown or unoffered op → `EOPNOTSUPP`; a bad segment count, `first_sect > last_sect`,
  `last_sect > 7`, a grant we were not given (or read-only when we must write), a range past the
  end of the disk, a write to a read-only VBD → an `ERROR` response for that request;
- every request slot is copied before it is decoded, all grants of a request are checked before
  any byte moves, and guest memory is reached only through `GrantMapper`.

Each refusal is counted by reason in `BackendStats.errors`.
"""
from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from dataclasses import dataclass, field

from storage.devices.blockdev import BlockDevice
from storage.errors import RingProtocolError, StorageError
from storage.rings import blkif
from storage.rings.blkif import SECTOR_SIZE, SECTORS_PER_PAGE, Op, Response, Status
from storage.rings.ring import (
    BackRing,
    EventChannel,
    EventChannelBinder,
    EventChannelClosedError,
    GrantError,
    GrantMapper,
    RingOverflowError,
    SharedRing,
)
from storage.rings.xenstore import XenbusState, Xs, parse_state, read_int, wait_for_state

VDISK_READONLY = 0x4
_ID = struct.Struct("<Q")
_OP_NAMES = {Op.READ: "READ", Op.WRITE: "WRITE"}
#: sectors of I/O (plus 8 per request) one backend does before yielding the loop to the others
TURN_SECTORS = 256


@dataclass(frozen=True)
class BackendOptions:
    """What this backend offers the frontend."""

    max_ring_page_order: int = 2
    max_indirect_segments: int = 64  # 0 = no indirect requests
    feature_flush: bool = True
    feature_discard: bool = True


@dataclass
class BackendStats:
    """Counters of one backend (across reconnections)."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sectors_read: int = 0
    sectors_written: int = 0
    batches: int = 0
    notifications_sent: int = 0
    wakeups: int = 0
    connections: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)


class _Refused(Exception):
    def __init__(self, reason: str, status: int = Status.ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class BlkBack:
    """Serves `disk` to frontend domain `frontend_domid`, device `devid`, while `run()` runs."""

    def __init__(self, disk: BlockDevice, *, xs: Xs, mapper: GrantMapper,
                 bind: EventChannelBinder, frontend_domid: int, devid: int,
                 read_only: bool = False, options: BackendOptions | None = None) -> None:
        self.disk = disk
        self.xs = xs
        self.mapper = mapper
        self._bind = bind
        self.frontend_domid = frontend_domid
        self.devid = devid
        self.read_only = read_only or disk.read_only
        self.options = options or BackendOptions()
        self.sectors = disk.size // SECTOR_SIZE
        self.stats = BackendStats()
        self.path = f"/local/domain/{xs.domid}/backend/vbd/{frontend_domid}/{devid}"
        self.frontend_path = f"/local/domain/{frontend_domid}/device/vbd/{devid}"
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self._ring: BackRing | None = None
        self._evtchn: EventChannel | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        """Negotiate, serve, and renegotiate whenever the frontend starts over; runs until
        cancelled (`Hypervisor.detach_vbd` does that)."""
        try:
            while True:
                await self._set_state(XenbusState.INITIALISING)
                await self._publish_features()
                await self._set_state(XenbusState.INIT_WAIT)
                await wait_for_state(self.xs, f"{self.frontend_path}/state",
                                     {XenbusState.INITIALISED, XenbusState.CONNECTED})
                try:
                    await self._connect()
                except StorageError as exc:
                    self._fail(f"connect: {exc}", "bad-connect")
                else:
                    await self._serve_until_closed()
                await self._teardown()
                # wait for the frontend to go away or start over before offering again
                await wait_for_state(self.xs, f"{self.frontend_path}/state",
                                     {XenbusState.INITIALISING, XenbusState.UNKNOWN,
                                      XenbusState.CLOSED})
                if parse_state(await self.xs.read(f"{self.frontend_path}/state")) \
                        == XenbusState.CLOSED:
                    await wait_for_state(self.xs, f"{self.frontend_path}/state",
                                         {XenbusState.INITIALISING, XenbusState.UNKNOWN})
        finally:
            await self._teardown()

    def _fail(self, message: str, reason: str) -> None:
        self.last_error = message
        self.stats.disconnects[reason] += 1

    async def _set_state(self, state: XenbusState) -> None:
        await self.xs.write(f"{self.path}/state", str(int(state)))

    async def _publish_features(self) -> None:
        o, w = self.options, self.xs.write
        await w(f"{self.path}/feature-flush-cache", "1" if o.feature_flush else "0")
        await w(f"{self.path}/feature-barrier", "0")
        await w(f"{self.path}/feature-discard", "1" if o.feature_discard else "0")
        await w(f"{self.path}/discard-granularity", str(SECTOR_SIZE))
        await w(f"{self.path}/discard-alignment", "0")
        await w(f"{self.path}/discard-secure", "0")
        await w(f"{self.path}/max-ring-page-order", str(o.max_ring_page_order))
        if o.max_indirect_segments:
            await w(f"{self.path}/feature-max-indirect-segments", str(o.max_indirect_segments))
        await w(f"{self.path}/mode", "r" if self.read_only else "w")

    async def _connect(self) -> None:
        fp = self.frontend_path
        order = await read_int(self.xs, f"{fp}/ring-page-order", default=0,
                               lo=0, hi=self.options.max_ring_page_order)
        if order == 0 and await self.xs.read(f"{fp}/ring-ref") is not None:
            refs = [await read_int(self.xs, f"{fp}/ring-ref", hi=2**32 - 1)]
        else:
            refs = [await read_int(self.xs, f"{fp}/ring-ref{i}", hi=2**32 - 1)
                    for i in range(1 << order)]
        port = await read_int(self.xs, f"{fp}/event-channel", hi=2**32 - 1)
        protocol = await self.xs.read(f"{fp}/protocol")
        if protocol not in (None, "x86_64-abi"):
            raise RingProtocolError(f"{fp}/protocol: unsupported ABI {protocol[:40]!r}")
        pages = self.mapper.map_contiguous(refs, write=True)
        self._ring = BackRing(SharedRing(pages, len(refs)))
        self._evtchn = self._bind(port)
        await self.xs.write(f"{self.path}/sectors", str(self.sectors))
        await self.xs.write(f"{self.path}/sector-size", str(SECTOR_SIZE))
        await self.xs.write(f"{self.path}/info", str(VDISK_READONLY if self.read_only else 0))
        self.stats.connections += 1
        await self._set_state(XenbusState.CONNECTED)
        self.connected.set()

    async def _serve_until_closed(self) -> None:
        serve = asyncio.create_task(self._serve(), name=f"blkback-{self.frontend_domid}")
        watch = asyncio.create_task(
            wait_for_state(self.xs, f"{self.frontend_path}/state",
                           {XenbusState.CLOSING, XenbusState.CLOSED, XenbusState.UNKNOWN,
                            XenbusState.INITIALISING}))
        try:
            await asyncio.wait({serve, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (serve, watch):
                t.cancel()
            for t in (serve, watch):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        await self._set_state(XenbusState.CLOSING)

    async def _teardown(self) -> None:
        self.connected.clear()
        if self._evtchn is not None:
            self._evtchn.close()
            self._evtchn = None
        self._ring = None
        with contextlib.suppress(StorageError):
            await self._set_state(XenbusState.CLOSED)

    # --- the data path ----------------------------------------------------------------------
    async def _serve(self) -> None:
        ring, evtchn = self._ring, self._evtchn
        assert ring is not None and evtchn is not None
        stats = self.stats
        try:
            while True:
                n = ring.unconsumed_requests()
                while n:
                    stats.batches += 1
                    # Work budget per turn of the event loop, so a frontend that keeps its
                    # ring full of the largest requests cannot starve the other VBDs served by
                    # the same loop (each turn: up to TURN_SECTORS sectors, a request = 8 more).
                    start = stats.sectors_read + stats.sectors_written
                    for i in range(n):
                        ring.put_response(self.handle(ring.take_request()))
                        if (stats.sectors_read + stats.sectors_written - start
                                + 8 * (i + 1) >= TURN_SECTORS):
                            break
                    if ring.push_responses():
                        evtchn.notify()
                        stats.notifications_sent += 1
                    await asyncio.sleep(0)  # let the loop breathe under a steady stream
                    n = ring.unconsumed_requests()
                if ring.final_check_for_requests():
                    continue
                await evtchn.wait()
                stats.wakeups += 1
        except RingOverflowError as exc:
            self._fail(str(exc), "ring-overflow")
        except EventChannelClosedError as exc:
            self._fail(str(exc), "event-channel-closed")

    def handle(self, raw: bytes) -> Response:
        """Execute one request slot (already copied out of the ring); always returns a response."""
        op = raw[0]
        rid = _ID.unpack_from(raw, 8)[0]
        try:
            if op == Op.READ or op == Op.WRITE:
                self.stats.requests[_OP_NAMES[op]] += 1
                nseg = raw[1]
                if nseg == 0 or nseg > blkif.MAX_SEGMENTS:
                    raise _Refused("bad-nr-segments")
                f = blkif.REQUEST_N[nseg].unpack_from(raw)
                flat = iter(f[5:])
                self._rw(op, f[4], list(zip(flat, flat, flat, strict=True)))
            elif op == Op.INDIRECT:
                self.stats.requests["INDIRECT"] += 1
                self._indirect(blkif.unpack_request(raw))  # type: ignore[arg-type]
            elif op == Op.FLUSH_DISKCACHE:
                self.stats.requests["FLUSH_DISKCACHE"] += 1
                if not self.options.feature_flush:
                    raise _Refused("unsupported-op", Status.EOPNOTSUPP)
                self.disk.flush()
            elif op == Op.DISCARD:
                self.stats.requests["DISCARD"] += 1
                self._discard(blkif.unpack_request(raw))  # type: ignore[arg-type]
            else:
                self.stats.requests["unknown"] += 1
                raise _Refused("unsupported-op", Status.EOPNOTSUPP)
        except _Refused as exc:
            self.stats.errors[exc.reason] += 1
            return Response(rid, op, exc.status)
        except GrantError:
            self.stats.errors["bad-grant"] += 1
            return Response(rid, op, Status.ERROR)
        except (StorageError, OSError):
            self.stats.errors["io-error"] += 1
            return Response(rid, op, Status.ERROR)
        except Exception as exc:  # a disk driver's bug must not take the backend down
            self.stats.errors["disk-exception"] += 1
            self.last_error = f"request {rid}: {type(exc).__name__}: {exc}"
            return Response(rid, op, Status.ERROR)
        return Response(rid, op, Status.OKAY)

    def _check_range(self, sector: int, nr: int) -> None:
        if sector >= self.sectors or nr > self.sectors - sector:
            raise _Refused("beyond-end")

    def _rw(self, op: int, sector: int, segments: list[tuple[int, int, int]]) -> None:
        """READ or WRITE of (gref, first_sect, last_sect) segments, contiguous on the disk."""
        write = op == Op.WRITE
        if write and self.read_only:
            raise _Refused("read-only")
        total = 0
        for _, first, last in segments:
            if first > last or last >= SECTORS_PER_PAGE:
                raise _Refused("bad-segment")
            total += last - first + 1
        self._check_range(sector, total)
        mapper = self.mapper
        # Map (= validate) every grant before moving a byte: no half-done requests.
        views = [mapper.map(gref, write=not write)[first * SECTOR_SIZE:
                                                   (last + 1) * SECTOR_SIZE]
                 for gref, first, last in segments]
        offset = sector * SECTOR_SIZE
        if write:
            self.disk.write(offset, b"".join(views))
            self.stats.sectors_written += total
        else:
            data = self.disk.read(offset, total * SECTOR_SIZE)
            pos = 0
            for v in views:
                n = len(v)
                v[:] = data[pos: pos + n]
                pos += n
            self.stats.sectors_read += total

    def _indirect(self, req: blkif.IndirectRequest) -> None:
        limit = self.options.max_indirect_segments
        if not limit:
            raise _Refused("unsupported-op", Status.EOPNOTSUPP)
        if req.indirect_op not in (Op.READ, Op.WRITE):
            raise _Refused("bad-indirect-op")
        if req.nr_segments == 0 or req.nr_segments > limit:
            raise _Refused("bad-nr-segments")
        npages = blkif.indirect_pages_for(req.nr_segments)
        # Copy the descriptors out of guest memory first: the guest can't change them under us.
        table = b"".join(bytes(self.mapper.map(g, write=False))
                         for g in req.indirect_grefs[:npages])
        segments = list(blkif.SEGMENT.iter_unpack(table[: req.nr_segments * blkif.SEGMENT.size]))
        self._rw(req.indirect_op, req.sector, segments)

    def _discard(self, req: blkif.DiscardRequest) -> None:
        if not self.options.feature_discard:
            raise _Refused("unsupported-op", Status.EOPNOTSUPP)
        if self.read_only:
            raise _Refused("read-only")
        if req.nr_sectors == 0:
            return
        self._check_range(req.sector, req.nr_sectors)
        self.disk.discard(req.sector * SECTOR_SIZE, req.nr_sectors * SECTOR_SIZE)
