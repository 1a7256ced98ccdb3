"""blkfront ↔ blkback through the ring: round trips, read-only VBDs, flush ordering, discard."""
from __future__ import annotations

import asyncio
import os
import random

import pytest

from storage.devices.blockdev import BlockDevice
from storage.devices.memdisk import MemoryDisk, RawFileDisk
from storage.rings.blkback import BackendOptions
from storage.rings.blkfront import BlkFront, BlkIOError
from storage.rings.hypervisor import XVDA, Hypervisor

from .conftest import DISK_SIZE, Host, make_host


async def test_handshake_publishes_features_and_states(host: Host) -> None:
    async with BlkFront(host.guest, XVDA) as front:
        xs = host.hv.store
        back = "/local/domain/0/backend/vbd/1/51712"
        assert xs.read(f"{back}/state") == "4"
        assert xs.read("/local/domain/1/device/vbd/51712/state") == "4"
        for key, value in {"feature-flush-cache": "1", "feature-discard": "1",
                           "sectors": str(DISK_SIZE // 512), "sector-size": "512",
                           "mode": "w", "max-ring-page-order": "2"}.items():
            assert xs.read(f"{back}/{key}") == value, key
        assert front.size == DISK_SIZE and not front.read_only
    assert host.hv.store.read("/local/domain/1/device/vbd/51712/state") == "6"


@pytest.mark.parametrize("order", [0, 2])
async def test_round_trip_any_size_and_alignment(host: Host, order: int) -> None:
    rng = random.Random(order)
    async with BlkFront(host.guest, XVDA, ring_page_order=order) as front:
        model = bytearray(DISK_SIZE)
        for offset, length in [(0, 512), (1, 1), (511, 2), (1000, 70_000), (4096, 45_056),
                               (DISK_SIZE - 3, 3), (12_345, 600_000), (8, 0)]:
            data = rng.randbytes(length)
            await front.write(offset, data)
            model[offset: offset + length] = data
        assert await front.read(0, DISK_SIZE) == bytes(model)
        assert host.disk.read(0, DISK_SIZE) == bytes(model)
        assert await front.read(777, 5000) == bytes(model[777:5777])
        # one page ring: 32 slots share 1024 guest pages, so indirect requests carry 600 KB;
        # a 128-slot ring leaves no pages for them and stays with 11-segment requests
        assert (front.stats.indirect_requests > 0) == (order == 0)
        assert front.stats.requests > 10
    assert host.guest.grants.in_use == 0  # every grant revoked again


async def test_without_indirect_requests_stay_within_11_segments() -> None:
    h = await make_host(options=BackendOptions(max_indirect_segments=0))
    try:
        async with BlkFront(h.guest, XVDA) as front:
            data = os.urandom(300_000)
            await front.write(4096, data)
            assert await front.read(4096, len(data)) == data
            assert front.max_segments == 11 and front.stats.indirect_requests == 0
            assert h.backend.stats.requests["INDIRECT"] == 0
    finally:
        await h.hv.close()


async def test_many_requests_in_flight(host: Host) -> None:
    async with BlkFront(host.guest, XVDA) as front:
        blocks = {i: os.urandom(4096) for i in range(200)}
        await asyncio.gather(*(front.write(i * 4096, d) for i, d in blocks.items()))
        got = await asyncio.gather(*(front.read(i * 4096, 4096) for i in blocks))
        assert got == list(blocks.values())
        # event suppression: far fewer notifications than requests under load
        assert front.stats.notifications_sent < front.stats.requests / 4


async def test_read_only_vbd_refuses_writes_with_error_response(ro_host: Host) -> None:
    ro_host.disk.write(0, b"keep" * 128)
    async with BlkFront(ro_host.guest, XVDA) as front:
        assert front.read_only
        assert ro_host.hv.store.read("/local/domain/0/backend/vbd/1/51712/mode") == "r"
        with pytest.raises(BlkIOError, match="read-only"):
            await front.write(0, b"x" * 512)
        with pytest.raises(BlkIOError):
            await front.discard(0, 4096)
        assert await front.read(0, 512) == b"keep" * 128
        await front.flush()  # nothing to flush, but allowed
    assert ro_host.backend.stats.errors["read-only"] == 2


class RecordingDisk(MemoryDisk):
    """Logs writes and flushes in the order the backend performs them."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.log: list[tuple[str, int]] = []

    def write(self, offset: int, data: bytes) -> None:
        super().write(offset, data)
        self.log.append(("write", offset))

    def flush(self) -> None:
        super().flush()
        self.log.append(("flush", -1))


async def test_flush_orders_writes() -> None:
    disk = RecordingDisk(DISK_SIZE)
    h = await make_host(disk=disk)
    try:
        async with BlkFront(h.guest, XVDA) as front:
            before = [front.write(i * 4096, os.urandom(4096)) for i in range(40)]
            tasks = [asyncio.create_task(w) for w in before]
            await asyncio.sleep(0)  # all 40 writes are on the ring before the flush
            flush = asyncio.create_task(front.flush())
            await asyncio.gather(*tasks, flush)
            after = await asyncio.gather(front.write(200 * 4096, b"z" * 4096))
            assert after == [None]
        flush_at = disk.log.index(("flush", -1))
        written_before = {off for kind, off in disk.log[:flush_at] if kind == "write"}
        assert written_before == {i * 4096 for i in range(40)}
        assert ("write", 200 * 4096) in disk.log[flush_at:]
    finally:
        await h.hv.close()


async def test_discard_zeroes_whole_sectors_inside_range(host: Host) -> None:
    host.disk.write(0, b"\xff" * 8192)
    async with BlkFront(host.guest, XVDA) as front:
        await front.discard(100, 4000)  # whole sectors 1..7 (bytes 512..4095)
        data = await front.read(0, 8192)
    assert data[:512] == b"\xff" * 512
    assert data[512:4096] == bytes(3584)
    assert data[4096:] == b"\xff" * 4096
    assert host.disk.discards == 1


async def test_out_of_range_is_refused_before_the_ring(host: Host) -> None:
    async with BlkFront(host.guest, XVDA) as front:
        with pytest.raises(BlkIOError, match="outside"):
            await front.read(DISK_SIZE - 10, 11)


async def test_serves_a_raw_file(tmp_path) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(1 << 20))
    disk: BlockDevice = RawFileDisk(str(path))
    hv = Hypervisor()
    try:
        hv.create_domain(1, ram_pages=512)
        await hv.attach_vbd(1, disk)
        async with BlkFront(hv.guest(1), XVDA) as front:
            await front.write(4097, b"hello ring")
            await front.flush()
    finally:
        await hv.close()
        disk.close()
    assert path.read_bytes()[4097:4107] == b"hello ring"


async def test_guest_can_reconnect_after_close(host: Host) -> None:
    async with BlkFront(host.guest, XVDA) as front:
        await front.write(0, b"a" * 512)
    async with BlkFront(host.guest, XVDA) as front:
        assert await front.read(0, 512) == b"a" * 512
    assert host.backend.stats.connections == 2


async def test_cancelled_request_keeps_its_pages_until_the_backend_answers(host: Host) -> None:
    host.disk.write(0, b"\x11" * 8192)
    async with BlkFront(host.guest, XVDA) as front:
        free_before = host.guest.pages.available
        assert front._ring is not None and front._evtchn is not None
        await asyncio.sleep(0.01)  # the backend has re-armed req_event and sleeps
        front._ring.idx[1] = 1000  # req_event far ahead: the push won't wake the backend
        task = asyncio.create_task(front.read(0, 4096))
        await asyncio.sleep(0)  # the request is on the ring; the backend sleeps
        assert host.guest.grants.in_use == 2  # ring page + the data page
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # still granted: the backend may write into that page until it answers
        assert host.guest.grants.in_use == 2
        front._evtchn.notify()
        for _ in range(5):
            await asyncio.sleep(0)
        assert host.guest.grants.in_use == 1  # answered: released
        assert host.guest.pages.available == free_before
        assert front.stats.unknown_responses == 0
        assert await asyncio.gather(*(front.read(0, 4096) for _ in range(40))) == \
            [b"\x11" * 4096] * 40  # every ring slot is usable again


class BuggyDisk(MemoryDisk):
    """A disk driver with a bug on one range."""

    def read(self, offset: int, length: int) -> bytes:
        if offset >= 1 << 20:
            raise ZeroDivisionError("driver bug")
        return super().read(offset, length)


async def test_a_disk_driver_bug_is_an_error_response_not_a_dead_backend() -> None:
    h = await make_host(disk=BuggyDisk(DISK_SIZE))
    try:
        async with BlkFront(h.guest, XVDA) as front:
            with pytest.raises(BlkIOError, match="I/O error"):
                await front.read(2 << 20, 512)
            assert await front.read(0, 512) == bytes(512)
        assert h.backend.stats.errors["disk-exception"] == 1
        assert "ZeroDivisionError" in (h.backend.last_error or "")
    finally:
        await h.hv.close()
