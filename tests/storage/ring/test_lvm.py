"""blkfront on LVM logical volumes: a guest's writes land in the LV; a COW snapshot taken
before them keeps the old contents; a read-only LV refuses writes through the ring."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from storage.lvm.vg import VolumeGroup, pvcreate
from storage.rings.blkfront import BlkFront, BlkIOError
from storage.rings.hypervisor import XVDA, Hypervisor


async def test_guest_writes_an_lv_and_its_snapshot_keeps_the_old_data(tmp_path: Path) -> None:
    pv = tmp_path / "pv0.img"
    pvcreate(pv, size=64 << 20)
    rng = random.Random(3)
    old, new = rng.randbytes(1 << 20), rng.randbytes(1 << 20)
    with VolumeGroup.create("vg0", [pv]) as vg:
        vg.lvcreate("data", 16 << 20)
        vg.open_lv("data").write(4096, old)
        vg.lvcreate("snap", 8 << 20, snapshot_of="data")
        vg.commit()
        async with Hypervisor() as hv:
            hv.create_domain(1, ram_pages=1024)
            await hv.attach_vbd(1, vg.open_lv("data"))
            await hv.attach_vbd(1, vg.open_lv("snap"), devid=51728, read_only=True)  # xvdb
            async with BlkFront(hv.guest(1), XVDA) as xvda, \
                    BlkFront(hv.guest(1), 51728) as xvdb:
                await xvda.write(4096 + 3, new)
                await xvda.flush()
                assert await xvda.read(4096 + 3, len(new)) == new
                assert await xvdb.read(4096, len(old)) == old
                with pytest.raises(BlkIOError, match="read-only"):
                    await xvdb.write(0, b"no")
    with VolumeGroup.open("vg0", [pv]) as vg:
        assert vg.open_lv("data").read(4096 + 3, len(new)) == new
        assert vg.open_lv("snap").read(4096, len(old)) == old
