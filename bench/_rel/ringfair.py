"""Ring fairness: an honest guest's VBD keeps its share while a hostile guest floods its ring.

Two domains on one `Hypervisor` (one backend task each, one event loop, as the backends share
dom0). The honest guest runs `BlkFront` with `depth` concurrent 4 KiB readers. The hostile one
negotiates honestly, then keeps every slot of its ring full of maximal requests (11 segments ×
8 sectors, the most work one slot can ask for) and also requests it is not entitled to (bad
grants, beyond the disk's end), collecting responses only to refill. Measured over `seconds` of
wall time: the honest reads per second alone, and with the flood; their ratio is the share
the honest VBD keeps (two VBDs: a fair share is about half). `request_ratio` compares the two
VBDs within the flooded run (honest requests per hostile request), which machine load does not
skew.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from storage.devices.memdisk import MemoryDisk
from storage.rings import blkif
from storage.rings.blkfront import BlkFront
from storage.rings.hypervisor import XVDA, Guest, Hypervisor
from storage.rings.ring import FrontRing, SharedRing
from storage.rings.xenstore import XenbusState, wait_for_state


async def _hostile(guest: Guest, stop: asyncio.Event, counts: dict[str, int]) -> None:
    xs = guest.xs
    path = f"/local/domain/{guest.domid}/device/vbd/{XVDA}"
    back = f"/local/domain/0/backend/vbd/{guest.domid}/{XVDA}"
    await wait_for_state(xs, f"{back}/state", {XenbusState.INIT_WAIT})
    pfn = guest.pages.alloc()
    sring = SharedRing(guest.memory.page(pfn), 1)
    sring.init()
    ring = FrontRing(sring)
    gref = guest.grants.grant_access(pfn, 0, readonly=False)
    port, evtchn = await guest.alloc_unbound(0)
    await xs.write(f"{path}/ring-ref", str(gref))
    await xs.write(f"{path}/event-channel", str(port))
    await xs.write(f"{path}/state", str(int(XenbusState.INITIALISED)))
    await wait_for_state(xs, f"{back}/state", {XenbusState.CONNECTED})
    pages = [guest.grants.grant_access(guest.pages.alloc(), 0, readonly=False)
             for _ in range(blkif.MAX_SEGMENTS)]
    full = [x for g in pages for x in (g, 0, 7)]
    bad = [x for g in pages for x in (9999, 0, 7)]
    rid = 0
    while not stop.is_set():
        while ring.free_requests():
            kind = rid % 8
            if kind == 6:
                ring.put_rw(blkif.Op.READ, rid, 0, bad)          # ungranted pages
            elif kind == 7:
                ring.put_rw(blkif.Op.READ, rid, 2**40, full)      # beyond the disk
            else:
                ring.put_rw(blkif.Op.READ, rid, (rid * 88) % 8000, full)
            rid += 1
        if ring.push_requests():
            evtchn.notify()
        while ring.unconsumed_responses():
            ring.take_response()
            counts["responses"] += 1
        await asyncio.sleep(0)


async def _honest(front: BlkFront, depth: int, seconds: float) -> int:
    done = 0
    end = time.perf_counter() + seconds

    async def reader(i: int) -> None:
        nonlocal done
        off = i * 4096
        while time.perf_counter() < end:
            await front.read(off % (front.size - 4096), 4096)
            off += depth * 4096
            done += 1

    await asyncio.gather(*(reader(i) for i in range(depth)))
    return done


async def _measure(seconds: float, depth: int, flood: bool) -> dict[str, Any]:
    hv = Hypervisor()
    try:
        hv.create_domain(1, ram_pages=512)
        hv.create_domain(2, ram_pages=512)
        await hv.attach_vbd(1, MemoryDisk(8 << 20))
        hostile_back = await hv.attach_vbd(2, MemoryDisk(8 << 20))
        front = BlkFront(hv.guest(1), XVDA)
        await front.connect()
        stop = asyncio.Event()
        counts = {"responses": 0}
        task = asyncio.create_task(_hostile(hv.guest(2), stop, counts)) if flood else None
        await asyncio.sleep(0.05)
        reads = await _honest(front, depth, seconds)
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 5)
        with contextlib.suppress(Exception):
            await front.close()
        return {"honest_reads_per_s": round(reads / seconds),
                "hostile_responses_per_s": round(counts["responses"] / seconds),
                "hostile_errors": dict(hostile_back.stats.errors)}
    finally:
        await hv.close()


def run_ring_fairness(*, seconds: float = 1.0, depth: int = 8, rounds: int = 3) -> dict[str, Any]:
    """Honest throughput alone and beside a flooding hostile frontend (alternating `rounds`
    times, medians, so a noisy machine shifts both alike), and the share kept."""
    alone, flooded = [], []
    for _ in range(rounds):
        alone.append(asyncio.run(_measure(seconds, depth, False)))
        flooded.append(asyncio.run(_measure(seconds, depth, True)))

    def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return sorted(runs, key=lambda r: r["honest_reads_per_s"])[len(runs) // 2]

    a, f = median(alone), median(flooded)
    # requests the honest VBD completes per request of the flooder, in the same run (so load on
    # the machine shifts both alike): about 1 when the loop serves both VBDs evenly
    per_request = [r["honest_reads_per_s"] / max(1, r["hostile_responses_per_s"]) for r in flooded]
    return {"alone": a, "flooded": f,
            "share": round(f["honest_reads_per_s"] / max(1, a["honest_reads_per_s"]), 3),
            "request_ratio": round(sorted(per_request)[len(per_request) // 2], 3)}
