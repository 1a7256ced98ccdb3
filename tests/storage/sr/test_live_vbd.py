"""A guest keeps using its disk through the ring while the host backs it up: snapshot, CBT
enable and an export by another process never stop or corrupt the guest's I/O (issue 20:
"Guests see none of this"), and what the export holds is the disk as it was at the snapshot."""
from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from storage.rings.blkfront import BlkFront
from storage.rings.hypervisor import XVDA, Hypervisor
from storage.sr import cbt
from storage.sr.sr import SR

SIZE = 16 << 20
BLOCK = 4096


async def _hvsim(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsim", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


def _same_but_in_flight(got: bytes, want: bytes, in_flight: tuple[int, bytes, bytes] | None
                        ) -> bool:
    """`got` is the disk as `want` says, except that a write in flight when it was taken may
    hold its old or its new data (a snapshot is crash-consistent, as on XenServer)."""
    if in_flight is None:
        return got == want
    off, old, new = in_flight
    return (got[:off] == want[:off] and got[off + BLOCK:] == want[off + BLOCK:]
            and got[off:off + BLOCK] in (old, new))


class Guest:
    """Writes random 4 KiB blocks through the ring and reads each back, against a model."""

    def __init__(self, front: BlkFront, model: bytearray, seed: int) -> None:
        self.front, self.model, self.rng = front, model, random.Random(seed)
        self.ops = 0
        self.written: set[int] = set()      # 64 KiB CBT blocks written
        self.stop = asyncio.Event()
        self.in_flight: tuple[int, bytes, bytes] | None = None   # (offset, old, new)
        self.progress = asyncio.Event()

    async def reach(self, ops: int) -> None:
        """Wait until the guest has done `ops` operations in all."""
        while self.ops < ops:
            self.progress.clear()
            await self.progress.wait()

    async def run(self) -> None:
        while not self.stop.is_set():
            off = self.rng.randrange(len(self.model) // BLOCK) * BLOCK
            data = self.rng.randbytes(BLOCK)
            self.in_flight = (off, bytes(self.model[off:off + BLOCK]), data)
            await self.front.write(off, data)
            self.model[off:off + BLOCK] = data
            self.in_flight = None
            self.written.add(off // (64 << 10))
            assert await self.front.read(off, BLOCK) == data
            self.ops += 1
            self.progress.set()
            await asyncio.sleep(0)


async def test_ring_serves_through_snapshot_cbt_enable_and_export(sr_path: Path,
                                                                  tmp_path: Path) -> None:
    s = SR.open(sr_path)
    vdi = s.vdi_create("live", SIZE)
    vbd = s.vbd_create(vdi.uuid, "vm1")
    dev = s.vbd_plug(vbd.uuid)
    model = bytearray(dev.size)     # VHD volumes round the size up to a CHS geometry
    try:
        async with Hypervisor() as hv:
            hv.create_domain(1, ram_pages=1024)
            back = await hv.attach_vbd(1, dev)
            async with BlkFront(hv.guest(1), XVDA) as front:
                guest = Guest(front, model, seed=20)
                task = asyncio.create_task(guest.run())
                await guest.reach(50)
                cbt.enable(s, vdi.uuid)             # while the guest writes
                ops_at_enable = guest.ops
                await guest.reach(ops_at_enable + 50)
                snap1 = s.vdi_snapshot(vdi.uuid)    # pauses and reopens the VBD in place
                at_snap1, fly1 = bytes(model), guest.in_flight
                guest.written.clear()
                out = tmp_path / "snap1.raw"
                before_export = guest.ops
                rc, text = await _hvsim("vdi", "export", "--sr", str(sr_path), snap1.uuid,
                                        str(out))
                during_export = guest.ops - before_export
                assert rc == 0, text
                assert during_export > 0, "the ring stalled while the export ran"
                await guest.reach(before_export + during_export + 50)
                snap2 = s.vdi_snapshot(vdi.uuid)
                at_snap2, fly2 = bytes(model), guest.in_flight
                written_between = set(guest.written)
                guest.stop.set()
                await task
                assert await front.read(0, front.size) == bytes(model)
            assert not back.stats.errors
        assert _same_but_in_flight(out.read_bytes(), at_snap1, fly1)
        changed = cbt.list_changed_blocks(s, snap1.uuid, snap2.uuid)
        blocks = {off // (64 << 10) for off, n in cbt.ranges(changed)
                  for off in range(off, off + n, 64 << 10)}
        maybe = {f[0] // (64 << 10) for f in (fly1, fly2) if f is not None}
        assert written_between - maybe <= blocks, "a guest write is missing from the bitmap"
        assert blocks - maybe <= written_between  # nothing else was written in between
        dev2 = s.vdi_open(snap2.uuid, read_only=True)
        try:
            assert _same_but_in_flight(dev2.read(0, dev2.size), at_snap2, fly2)
        finally:
            dev2.close()
    finally:
        s.vbd_unplug(vbd.uuid)
        s.close()
