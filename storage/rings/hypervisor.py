"""The host's share of a split driver: domains' memory, event channels, the toolstack's VBD setup.

`Hypervisor` owns one xenstore, the event-channel hub and each guest domain's `DomainMemory`.
`attach_vbd` does what xapi/xl do for a VBD — write the frontend and backend directories — and
starts a `BlkBack` serving the disk. A guest in the same process gets its side with
`hv.guest(domid)`; a guest in another process connects through `storage.rings.hostlink`.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from storage.devices.blockdev import BlockDevice
from storage.errors import RingProtocolError
from storage.rings.blkback import BackendOptions, BlkBack
from storage.rings.ring import (
    DomainMemory,
    EventChannel,
    GrantMapper,
    GrantTable,
    PageAllocator,
    SocketEventChannel,
    local_event_channel_pair,
)
from storage.rings.xenstore import XenbusState, XenStore, Xs

XVDA = 51712  # Linux's device number for xvda (major 202, minor 0)


@dataclass
class _Unbound:
    remote_domid: int
    end: EventChannel | None  # the end the binding domain will get (None until attached)


class EventChannelHub:
    """Interdomain event channels: `alloc_unbound` by one domain, `bind_interdomain` by the other.

    The port a frontend writes to xenstore is hostile: binding checks that the port exists, is
    unbound, and was offered to the binding domain.
    """

    def __init__(self) -> None:
        self._unbound: dict[tuple[int, int], _Unbound] = {}
        self._next_port: dict[int, int] = {}

    def _port(self, domid: int) -> int:
        port = self._next_port.get(domid, 1)
        self._next_port[domid] = port + 1
        return port

    def alloc_unbound(self, domid: int, remote_domid: int) -> tuple[int, EventChannel]:
        """A new in-process channel: the caller's end and its port number."""
        a, b = local_event_channel_pair()
        port = self._port(domid)
        self._unbound[(domid, port)] = _Unbound(remote_domid, b)
        return port, a

    def reserve_remote(self, domid: int, remote_domid: int) -> int:
        """A port for a domain in another process, whose end arrives later (`attach_remote`)."""
        port = self._port(domid)
        self._unbound[(domid, port)] = _Unbound(remote_domid, None)
        return port

    def attach_remote(self, domid: int, port: int, end: SocketEventChannel) -> None:
        """Give a reserved port the host-side end of the guest's socket."""
        entry = self._unbound.get((domid, port))
        if entry is None or entry.end is not None:
            raise RingProtocolError(f"domain {domid} has no reserved event channel {port}")
        entry.end = end

    def bind_interdomain(self, domid: int, remote_domid: int, remote_port: int) -> EventChannel:
        """Bind the other end of `remote_domid`'s unbound port `remote_port`."""
        entry = self._unbound.get((remote_domid, remote_port))
        if entry is None or entry.end is None or entry.remote_domid != domid:
            raise RingProtocolError(
                f"event channel {remote_port} of domain {remote_domid} is not offered to "
                f"domain {domid}")
        del self._unbound[(remote_domid, remote_port)]
        return entry.end

    def drop_domain(self, domid: int) -> None:
        """Forget every unbound port of a domain."""
        for key in [k for k in self._unbound if k[0] == domid]:
            end = self._unbound.pop(key).end
            if end is not None:
                end.close()


@dataclass
class Guest:
    """A guest domain's own view: its memory, grant table, free pages, xenstore connection."""

    domid: int
    memory: DomainMemory
    xs: Xs
    hub: EventChannelHub | None = None
    grants: GrantTable = field(init=False)
    pages: PageAllocator = field(init=False)

    def __post_init__(self) -> None:
        self.grants = GrantTable(self.memory)
        self.pages = PageAllocator(self.memory.ram_pages)

    async def alloc_unbound(self, remote_domid: int) -> tuple[int, EventChannel]:
        """An event channel port for `remote_domid` to bind."""
        assert self.hub is not None
        return self.hub.alloc_unbound(self.domid, remote_domid)


class Hypervisor:
    """One host: xenstore, event channels, domains and their VBD backends."""

    def __init__(self) -> None:
        self.store = XenStore()
        self.xs = self.store.handle(0)
        self.evtchn = EventChannelHub()
        self.domains: dict[int, DomainMemory] = {}
        self.backends: dict[tuple[int, int], BlkBack] = {}
        self._tasks: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._guests: dict[int, Guest] = {}

    def create_domain(self, domid: int, *, ram_pages: int = 4096, grant_pages: int = 4,
                      shared: bool = False) -> DomainMemory:
        """Give domain `domid` its memory (shared memory if its guest runs in another process)."""
        if domid <= 0 or domid in self.domains:
            raise RingProtocolError(f"domain {domid} exists or is not a guest domain id")
        mem = (DomainMemory.shared if shared else DomainMemory.local)(
            ram_pages, grant_pages=grant_pages)
        self.domains[domid] = mem
        base = f"/local/domain/{domid}"
        self.store.write(f"{base}/domid", str(domid))
        self.store.write(f"{base}/memory/pages", str(ram_pages))
        self.store.write(f"{base}/memory/grant-pages", str(grant_pages))
        if mem.name:
            self.store.write(f"{base}/memory/shm", mem.name)
        return mem

    def guest(self, domid: int) -> Guest:
        """The in-process guest side of domain `domid` (one per domain: it owns the domain's
        free pages and grant table, which every frontend of that guest shares)."""
        if domid not in self._guests:
            if domid not in self.domains:
                raise RingProtocolError(f"no domain {domid}")
            self._guests[domid] = Guest(domid, self.domains[domid], self.store.handle(domid),
                                        self.evtchn)
        return self._guests[domid]

    async def attach_vbd(self, domid: int, disk: BlockDevice, *, devid: int = XVDA,
                         read_only: bool = False,
                         options: BackendOptions | None = None) -> BlkBack:
        """Plug `disk` into domain `domid` as `devid` and start its backend."""
        if domid not in self.domains:
            raise RingProtocolError(f"no domain {domid}")
        if (domid, devid) in self.backends:
            raise RingProtocolError(f"domain {domid} already has device {devid}")
        front = f"/local/domain/{domid}/device/vbd/{devid}"
        back = f"/local/domain/0/backend/vbd/{domid}/{devid}"
        w = self.store.write
        w(f"{front}/backend", back)
        w(f"{front}/backend-id", "0")
        w(f"{front}/virtual-device", str(devid))
        w(f"{front}/device-type", "disk")
        w(f"{front}/state", str(int(XenbusState.INITIALISING)))
        w(f"{back}/frontend", front)
        w(f"{back}/frontend-id", str(domid))
        w(f"{back}/params", getattr(disk, "name", "") or type(disk).__name__)
        w(f"{back}/type", "vbd")

        def bind(port: int, _domid: int = domid) -> EventChannel:
            return self.evtchn.bind_interdomain(0, _domid, port)

        backend = BlkBack(disk, xs=self.xs, mapper=GrantMapper(self.domains[domid], 0),
                          bind=bind, frontend_domid=domid, devid=devid, read_only=read_only,
                          options=options)
        self.backends[(domid, devid)] = backend
        self._tasks[(domid, devid)] = asyncio.create_task(backend.run(),
                                                           name=f"blkback-{domid}-{devid}")
        await asyncio.sleep(0)
        return backend

    async def detach_vbd(self, domid: int, devid: int = XVDA) -> None:
        """Stop a backend and remove the device's xenstore directories."""
        task = self._tasks.pop((domid, devid), None)
        self.backends.pop((domid, devid), None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.store.rm(f"/local/domain/0/backend/vbd/{domid}/{devid}")
        self.store.rm(f"/local/domain/{domid}/device/vbd/{devid}")

    def guest_gone(self, domid: int) -> None:
        """A guest process went away: its devices read as Closed, its unbound ports go."""
        base = f"/local/domain/{domid}/device/vbd"
        for dev in self.store.ls(base):
            self.store.write(f"{base}/{dev}/state", str(int(XenbusState.CLOSED)))
        self.evtchn.drop_domain(domid)

    async def destroy_domain(self, domid: int) -> None:
        """Destroy domain `domid`: stop its backends, remove its whole xenstore tree (as
        xenstored does on @releaseDomain), drop its event channels and memory."""
        for d, devid in [k for k in self._tasks if k[0] == domid]:
            await self.detach_vbd(d, devid)
        self.store.rm_domain(domid)
        self.store.rm(f"/local/domain/0/backend/vbd/{domid}")
        self.evtchn.drop_domain(domid)
        self._guests.pop(domid, None)
        mem = self.domains.pop(domid, None)
        if mem is not None:
            mem.close()

    async def close(self) -> None:
        """Stop every backend and release every domain's memory."""
        for domid, devid in list(self._tasks):
            await self.detach_vbd(domid, devid)
        self._guests.clear()
        for mem in self.domains.values():
            mem.close()
        self.domains.clear()

    async def __aenter__(self) -> Hypervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
