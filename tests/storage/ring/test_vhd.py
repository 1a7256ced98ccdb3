"""blkfront on VHD images: what a guest writes through the ring is what `hvsim vhd export` and
a re-read through the ring see, on a differencing child whose parent holds older data."""
from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from storage.rings.blkfront import BlkFront
from storage.rings.hypervisor import XVDA, Hypervisor
from storage.vhd.chain import create_image, open_chain

SIZE = 8 << 20


async def run_hvsim(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsim", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def make_chain(tmp: Path) -> tuple[Path, bytearray]:
    rng = random.Random(5)
    base = tmp / "base.vhd"
    img = create_image(base, size=SIZE)
    model = bytearray(img.size)
    base_data = rng.randbytes(3 << 20)
    img.write(1 << 20, base_data)
    model[1 << 20: (1 << 20) + len(base_data)] = base_data
    img.close()
    child = tmp / "child.vhd"
    create_image(child, parent_path=base).close()
    return child, model


async def test_writes_through_the_ring_read_back_through_vhd_export(tmp_path: Path) -> None:
    child, model = make_chain(tmp_path)
    rng = random.Random(6)
    disk = open_chain(child, read_only=False)
    try:
        async with Hypervisor() as hv:
            hv.create_domain(1, ram_pages=1024)
            await hv.attach_vbd(1, disk)
            async with BlkFront(hv.guest(1), XVDA) as front:
                assert front.size == len(model)
                writes = [(0, 4096), (777, 3), (1 << 20, 512), ((2 << 20) - 100, 5000),
                          (3 << 20, 700_000), (front.size - 513, 513)]
                for off, n in writes:
                    data = rng.randbytes(n)
                    await front.write(off, data)
                    model[off: off + n] = data
                await front.flush()
                await front.discard(6 << 20, 4096)  # in the child: unallocated → parent (zeros)
                model[6 << 20: (6 << 20) + 4096] = bytes(4096)
                assert await front.read(0, front.size) == bytes(model)
    finally:
        disk.close()
    out = tmp_path / "flat.raw"
    rc, text = await run_hvsim("vhd", "export", str(child), str(out))
    assert rc == 0, text
    assert out.read_bytes() == bytes(model)
    base_again = open_chain(tmp_path / "base.vhd")
    try:  # the parent was never written through the child's ring
        assert base_again.read(0, 4096) == bytes(4096)
    finally:
        base_again.close()


async def test_guest_process_writes_a_vhd_served_by_ring_serve(tmp_path: Path) -> None:
    child, model = make_chain(tmp_path)
    sock = tmp_path / "host.sock"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsim", "ring", "serve", str(child), "--socket", str(sock),
        "--ram", "4M", stderr=asyncio.subprocess.PIPE)
    try:
        assert server.stderr is not None
        line = await asyncio.wait_for(server.stderr.readline(), 30)
        assert b"serving" in line, line
        rc, text = await run_hvsim("guest", "write", "--socket", str(sock), "1048573",
                                   "--data", "across the ring into a VHD")
        assert rc == 0, text
    finally:
        server.terminate()
        assert await asyncio.wait_for(server.wait(), 30) == 0
    model[1048573: 1048573 + 26] = b"across the ring into a VHD"
    out = tmp_path / "flat.raw"
    rc, text = await run_hvsim("vhd", "export", str(child), str(out))
    assert rc == 0, text
    assert out.read_bytes() == bytes(model)
