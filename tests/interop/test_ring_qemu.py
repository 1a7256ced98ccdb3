"""What a guest writes through the blkif ring into a dynamic VHD, qemu-img reads back."""
from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

from storage.rings.blkfront import BlkFront
from storage.rings.hypervisor import XVDA, Hypervisor
from storage.vhd.chain import create_image, open_chain


async def write_through_ring(path: Path) -> bytearray:
    disk = open_chain(path, read_only=False)
    rng = random.Random(9)
    try:
        async with Hypervisor() as hv:
            hv.create_domain(1, ram_pages=1024)
            await hv.attach_vbd(1, disk)
            async with BlkFront(hv.guest(1), XVDA) as front:
                model = bytearray(front.size)
                for off, n in [(5, 10_000), (3 << 20, 2 << 20), (front.size - 4096, 4096)]:
                    data = rng.randbytes(n)
                    await front.write(off, data)
                    model[off: off + n] = data
                await front.flush()
    finally:
        disk.close()
    return model


def test_qemu_img_reads_what_blkfront_wrote(tmp_path: Path) -> None:
    path = tmp_path / "disk.vhd"
    create_image(path, size=16 << 20).close()
    model = asyncio.run(write_through_ring(path))
    raw = tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(path), str(raw)],
                   check=True, capture_output=True)
    assert raw.read_bytes() == bytes(model)
