"""A guest's blkfront reads and writes VDIs of lvm and lvhd SRs through a plugged VBD, exactly
as on a file SR: the ring does not care what backs the disk."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from storage.rings.blkfront import BlkFront
from storage.rings.hypervisor import XVDA, Hypervisor
from storage.sr.sr import SR

MiB = 1 << 20


@pytest.mark.parametrize("kind", ["lvm", "lvhd"])
async def test_guest_io_through_the_ring_on_lvm_backed_vdis(tmp_path: Path, kind: str) -> None:
    sr = SR.create(tmp_path / kind, type_name=kind, device_config={"size": "128M"})
    vdi = sr.vdi_create("disk0", 16 * MiB)
    vbd = sr.vbd_create(vdi.uuid, "vm1")
    disk = sr.vbd_plug(vbd.uuid)
    rng = random.Random(3)
    model = bytearray(disk.size)
    async with Hypervisor() as hv:
        hv.create_domain(1, ram_pages=1024)
        await hv.attach_vbd(1, disk)
        async with BlkFront(hv.guest(1), XVDA) as front:
            assert front.size == disk.size
            for off, n in [(0, 4096), (777, 3), (5 * MiB - 100, 300_000),
                           (front.size - 512, 512)]:
                data = rng.randbytes(n)
                await front.write(off, data)
                model[off:off + n] = data
            await front.flush()
            snap = sr.vdi_snapshot(vdi.uuid)  # taken while the guest is running
            await front.write(0, b"after")
            assert await front.read(0, 5) == b"after"
            assert await front.read(5 * MiB - 100, 300_000) == bytes(model[5 * MiB - 100:
                                                                          5 * MiB + 299_900])
    sr.vbd_unplug(vbd.uuid)
    snapdev = sr.vdi_open(snap.uuid, read_only=True)
    assert snapdev.read(0, snapdev.size) == bytes(model)  # the snapshot kept the moment
    snapdev.close()
