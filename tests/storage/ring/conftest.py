"""Fixtures for the blkif ring tests: an in-process host with one guest, and a hand-driven
frontend that can put any bytes on the ring (to play a hostile guest)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage.devices.memdisk import MemoryDisk
from storage.rings import blkif
from storage.rings.blkback import BackendOptions, BlkBack
from storage.rings.blkif import Response
from storage.rings.hypervisor import XVDA, Guest, Hypervisor
from storage.rings.ring import EventChannel, FrontRing, SharedRing
from storage.rings.xenstore import XenbusState, wait_for_state

DISK_SIZE = 4 << 20
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A ring test that hangs fails in a minute, not after the suite-wide 300 s."""
    for item in items:
        if HERE in Path(str(item.fspath)).parents and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(60))


@dataclass
class Host:
    hv: Hypervisor
    guest: Guest
    disk: MemoryDisk
    backend: BlkBack


async def make_host(*, read_only: bool = False, disk: MemoryDisk | None = None,
                    options: BackendOptions | None = None, ram_pages: int = 1024) -> Host:
    hv = Hypervisor()
    hv.create_domain(1, ram_pages=ram_pages)
    disk = disk or MemoryDisk(DISK_SIZE)
    back = await hv.attach_vbd(1, disk, read_only=read_only, options=options)
    return Host(hv, hv.guest(1), disk, back)


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    h = await make_host()
    try:
        yield h
    finally:
        await h.hv.close()


@pytest.fixture
async def ro_host() -> AsyncIterator[Host]:
    h = await make_host(read_only=True)
    try:
        yield h
    finally:
        await h.hv.close()


class RawFront:
    """A frontend driven by hand: negotiates honestly, then writes whatever slot it is told."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.path = f"/local/domain/{guest.domid}/device/vbd/{XVDA}"
        self.back_path = f"/local/domain/0/backend/vbd/{guest.domid}/{XVDA}"
        self.ring: FrontRing
        self.evtchn: EventChannel

    async def connect(self) -> None:
        g, xs = self.guest, self.guest.xs
        await wait_for_state(xs, f"{self.back_path}/state", {XenbusState.INIT_WAIT})
        self.ring_pfn = g.pages.alloc()
        sring = SharedRing(g.memory.page(self.ring_pfn), 1)
        sring.init()
        self.sring = sring
        self.ring = FrontRing(sring)
        gref = g.grants.grant_access(self.ring_pfn, 0, readonly=False)
        port, self.evtchn = await g.alloc_unbound(0)
        await xs.write(f"{self.path}/ring-ref", str(gref))
        await xs.write(f"{self.path}/event-channel", str(port))
        await xs.write(f"{self.path}/state", str(int(XenbusState.INITIALISED)))
        await asyncio.wait_for(
            wait_for_state(xs, f"{self.back_path}/state", {XenbusState.CONNECTED}), 5)

    def page(self, *, readonly: bool, fill: bytes = b"") -> tuple[int, int]:
        """A fresh granted page (pfn, gref)."""
        pfn = self.guest.pages.alloc()
        self.guest.memory.page(pfn)[: len(fill)] = fill
        return pfn, self.guest.grants.grant_access(pfn, 0, readonly=readonly)

    async def submit_slot(self, slot: bytes) -> Response:
        """Put 112 raw bytes on the ring as the next request; wait for its response."""
        off = self.sring.slot(self.ring.req_prod_pvt)
        self.sring.buf[off: off + blkif.SLOT_SIZE] = slot.ljust(blkif.SLOT_SIZE, b"\0")
        self.ring.req_prod_pvt += 1
        if self.ring.push_requests():
            self.evtchn.notify()
        async with asyncio.timeout(5):
            while not self.ring.unconsumed_responses():
                if not self.ring.final_check_for_responses():
                    await self.evtchn.wait()
        return self.ring.take_response()

    async def submit(self, req: blkif.AnyRequest) -> Response:
        buf = bytearray(blkif.SLOT_SIZE)
        blkif.pack_request_into(buf, 0, req)
        return await self.submit_slot(bytes(buf))


@pytest.fixture
async def raw(host: Host) -> RawFront:
    front = RawFront(host.guest)
    await front.connect()
    return front
