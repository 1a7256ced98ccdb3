"""blkfront against a model: any mix of reads, writes, discards and flushes, at any size and
alignment, run concurrently, leaves the disk exactly as the same operations applied in order."""
from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.rings.blkback import BackendOptions
from storage.rings.blkfront import BlkFront, BlkIOError
from storage.rings.hypervisor import XVDA

from .conftest import make_host

SIZE = 2 << 20

op = st.tuples(st.sampled_from(["write", "write", "read", "discard", "flush"]),
               st.integers(0, SIZE - 1), st.integers(0, 200_000))


async def _run(ops: list[tuple[str, int, int]], seed: int, indirect: bool) -> None:
    from storage.devices.memdisk import MemoryDisk

    rng = random.Random(seed)
    opts = BackendOptions(max_indirect_segments=64 if indirect else 0)
    h = await make_host(disk=MemoryDisk(SIZE), options=opts, ram_pages=1024)
    model = bytearray(SIZE)
    try:
        async with BlkFront(h.guest, XVDA) as front:
            # Batches of non-overlapping writes go in flight together; reads check the model.
            for kind, off, n in ops:
                n = min(n, SIZE - off)
                if kind == "write":
                    data = rng.randbytes(n)
                    half = n // 2
                    await asyncio.gather(front.write(off, data[:half]),
                                         front.write(off + half, data[half:]))
                    model[off:off + n] = data
                elif kind == "read":
                    assert await front.read(off, n) == bytes(model[off:off + n])
                elif kind == "discard":
                    await front.discard(off, n)
                    first, end = -(-off // 512) * 512, (off + n) // 512 * 512
                    if end > first:
                        model[first:end] = bytes(end - first)
                else:
                    await front.flush()
            assert await front.read(0, SIZE) == bytes(model)
        assert h.disk.read(0, SIZE) == bytes(model)
        assert h.guest.grants.in_use == 0 and not h.backend.stats.errors
    finally:
        await h.hv.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(op, min_size=1, max_size=12), st.integers(0, 2**32), st.booleans())
def test_frontend_matches_model(ops: list[tuple[str, int, int]], seed: int,
                                indirect: bool) -> None:
    asyncio.run(_run(ops, seed, indirect))


async def test_features_not_offered_are_refused_by_the_frontend() -> None:
    h = await make_host(options=BackendOptions(feature_discard=False, feature_flush=False))
    try:
        async with BlkFront(h.guest, XVDA) as front:
            assert not front.feature_discard and not front.feature_flush
            with pytest.raises(BlkIOError, match="feature-discard"):
                await front.discard(0, 4096)
            with pytest.raises(BlkIOError, match="feature-flush-cache"):
                await front.flush()
        store = h.hv.store
        assert store.read(f"/local/domain/0/backend/vbd/1/{XVDA}/feature-discard") == "0"
    finally:
        await h.hv.close()
