"""`vdi import` of a raw file with zero regions is as sparse as `qemu-img convert -O vpc` of
the same file: zero 4 KiB pieces (qemu-img's `-S 4k`) are neither written nor allocated."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from storage.sr import transfer
from storage.sr.sr import SR

MiB, KiB = 1 << 20, 1 << 10
BLOCK = 2 * MiB                  # the VHD block size of both tools


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("holes", [False, True], ids=["dense-source", "sparse-source"])
def test_import_allocates_no_more_than_qemu_img(tmp_path: Path, holes: bool) -> None:
    rng = random.Random(20)
    size = 64 * MiB
    raw = bytearray(size)
    for b in range(0, size // BLOCK, 2):                       # half the blocks: data
        raw[b * BLOCK:(b + 1) * BLOCK] = rng.randbytes(BLOCK)
    islands = set()
    for _ in range(40):                                        # and 4 KiB islands in the rest
        b = rng.randrange(1, size // BLOCK, 2)
        off = b * BLOCK + rng.randrange(BLOCK // (4 * KiB)) * 4 * KiB
        raw[off:off + 100] = b"x" * 100                        # one 4 KiB piece, not zero
        islands.add(off)
    src = tmp_path / "in.raw"
    if holes:                        # zeros as holes of the file (not read: SEEK_DATA)
        with open(src, "wb") as f:
            f.truncate(size)
            for b in range(0, size // BLOCK, 2):
                f.seek(b * BLOCK)
                f.write(raw[b * BLOCK:(b + 1) * BLOCK])
            for off in islands:
                f.seek(off)
                f.write(raw[off:off + 100])
        assert _allocated(src) < size * 3 // 4
    else:
        src.write_bytes(raw)
    qemu = tmp_path / "q.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", str(src), str(qemu)],
                   check=True)
    sr = SR.create(tmp_path / "sr")
    vdi = sr.vdi_create("d", size)
    written = transfer.vdi_import(sr, vdi.uuid, src)
    ours = sr.path / sr.vdi(vdi.uuid).location
    sr.close()
    os.sync()                                                  # both fsynced; settle delalloc
    data_pieces = size // 2 // (4 * KiB) + len(islands)
    assert written == data_pieces * 4 * KiB                    # only non-zero 4 KiB pieces
    # Both allocate the same VHD blocks (those with any data) and write the same non-zero
    # pieces; per block we may differ by the page holding its bitmap (ours: data starts on
    # a page boundary; qemu's straddles pages), and the BAT and footers are the same size.
    blocks = size // BLOCK // 2 + len({o // BLOCK for o in islands})
    assert data_pieces * 4 * KiB <= _allocated(ours) <= _allocated(qemu) + blocks * 4 * KiB
    # the 64 KiB pieces written before would have cost 60 KiB per island more
    out = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(ours), str(out)],
                   check=True)
    assert out.read_bytes()[:size] == raw
