"""Random bytes scribbled into the shared ring page while I/O runs: the backend never crashes,
never hangs, never writes outside granted pages or past the disk."""
from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.errors import StorageError
from storage.rings.blkfront import BlkFront
from storage.rings.hypervisor import XVDA

from .conftest import DISK_SIZE, make_host

CANARY = b"\xa5\x5a" * 2048

# (offset, bytes, mode): 0 = anywhere in the page; 1 = inside the newest published request slot
# (likely not consumed yet); 2 = the bytes (padded to a slot) published as the next request;
# 3 = the same with the op byte folded into 0..6 so the backend digs into segments and grants
scribble = st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=112),
                     st.integers(0, 3))


async def _fuzz(scribbles: list[tuple[int, bytes, int]], seed: int) -> None:
    h = await make_host(ram_pages=512)
    rng = random.Random(seed)
    canaries = [h.guest.pages.alloc() for _ in range(8)]  # never granted to anyone
    for pfn in canaries:
        h.guest.memory.page(pfn)[:] = CANARY
    task = h.hv._tasks[(1, XVDA)]
    front = BlkFront(h.guest, XVDA)
    try:
        await front.connect()
        assert front._ring is not None
        shared = front._ring.buf

        async def io() -> None:
            for _ in range(30):
                off = rng.randrange(0, DISK_SIZE - 70_000)
                n = rng.choice([512, 4096, 5000, 60_000])
                try:
                    async with asyncio.timeout(0.1):
                        if rng.random() < 0.5:
                            await front.write(off, rng.randbytes(n))
                        else:
                            await front.read(off, n)
                except StorageError:
                    continue
                except TimeoutError:
                    return  # the scribbles broke the guest's view of the ring: stop the guest

        async def scribbler() -> None:
            ring = front._ring
            assert ring is not None
            for off, data, mode in scribbles:
                await asyncio.sleep(0)
                if mode == 1:
                    off = ring.sring.slot(ring.req_prod_pvt - 1) + off % 112
                elif mode >= 2:
                    if ring.free_requests() <= 0:
                        continue
                    slot = bytearray(data.ljust(112, b"\0"))
                    if mode == 3:
                        slot[0] %= 7
                        slot[1] %= 16
                    off = ring.sring.slot(ring.req_prod_pvt)
                    shared[off: off + 112] = slot
                    ring.req_prod_pvt += 1
                    ring.push_requests()
                    front._evtchn.notify()  # type: ignore[union-attr]
                    continue
                shared[off: off + len(data)] = data[: 4096 - off]
                if front._evtchn is not None:
                    front._evtchn.notify()

        await asyncio.gather(io(), scribbler())
        await asyncio.sleep(0.01)
        if task.done():  # the backend's run() loop must never end on its own
            raise AssertionError(f"backend died: {task.exception()!r}")
        for pfn in canaries:
            assert bytes(h.guest.memory.page(pfn)) == CANARY
        assert h.disk.size == DISK_SIZE
    finally:
        async with asyncio.timeout(5):  # and it can always be shut down
            await front.close(wait_s=0.2)
            await h.hv.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(scribble, min_size=1, max_size=25), st.integers(0, 2**32 - 1))
def test_scribbling_on_the_shared_page_never_breaks_the_backend(
        scribbles: list[tuple[int, bytes, int]], seed: int) -> None:
    asyncio.run(_fuzz(scribbles, seed))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 2**32 - 1)), min_size=1,
                max_size=10), st.integers(0, 2**32 - 1))
def test_scribbling_header_indices(writes: list[tuple[int, int]], seed: int) -> None:
    """Header words (req_prod, req_event, rsp_prod, rsp_event) set to arbitrary u32 values."""
    asyncio.run(_fuzz([(w * 4 % 16, v.to_bytes(4, "little"), False) for w, v in writes], seed))
