"""Our VHDs against libvhdi (libvhdi-python, `import pyvhdi`), including differencing chains.

libvhdi reads a differencing image once its parent is attached with `set_parent` (and the
parent's UUID matches). Its reading of a partially-set bitmap byte is wrong (it returns zeros
for a clear bit when another bit in that byte is set, instead of the parent's data), so these
comparisons use 4 KiB-aligned writes; sector-granular behaviour is checked against a model in
tests/storage/vhd. Seen here too: one libvhdi read spanning several blocks of a differencing
image returns zeros for some sectors the child holds (libvhdi-python 20260901), while the same
bytes read block by block are right; so we read through libvhdi one block at a time.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import pyvhdi

from storage.vhd import chain

pytestmark = pytest.mark.interop
MiB = 2**20


def open_libvhdi(paths: list[Path]) -> list:
    """Open base..leaf with libvhdi, attaching each parent; returns the handles."""
    handles = []
    for p in paths:
        f = pyvhdi.file()
        f.open(str(p))
        if handles:
            f.set_parent(handles[-1])
        handles.append(f)
    return handles


def test_chain_of_depth_6_reads_identically_through_libvhdi(tmp_path: Path) -> None:
    rng = random.Random(11)
    paths = [tmp_path / "l0.vhd"]
    img = chain.create_image(paths[0], size=12 * MiB, block_size=MiB)
    for level in range(6):
        if level:
            paths.append(tmp_path / f"l{level}.vhd")
            img = chain.create_image(paths[-1], parent_path=paths[-2])
        for _ in range(12):
            off = rng.randrange(img.size // 4096 - 8) * 4096
            img.write(off, bytes([level + 1]) * (4096 * rng.randrange(1, 8)))
        img.write(level * MiB, bytes(4096))           # zeros that must hide the parent's data
        img.close()
    handles = open_libvhdi(paths)
    try:
        for depth, p in enumerate(paths):
            ours = chain.open_chain(p)
            try:
                assert ours.depth == depth + 1
                h = handles[depth]
                assert h.get_media_size() == ours.size
                assert str(h.get_identifier()) == str(ours.uuid)
                if depth:
                    assert str(h.get_parent_identifier()) == str(ours.parent_uuid)
                theirs = b"".join(h.read_buffer_at_offset(min(MiB, ours.size - off), off)
                                  for off in range(0, ours.size, MiB))
                assert theirs == ours.read(0, ours.size), f"level {depth} differs"
            finally:
                ours.close()
    finally:
        for h in reversed(handles):
            h.close()


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_libvhdi_reads_our_standalone_images(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "d.vhd"
    img = chain.create_image(p, size=7 * MiB, disk_type=kind, block_size=512 * 1024)
    img.write(123_456, b"unaligned works for dynamic disks too")
    img.write(6 * MiB, b"\x99" * 8192)
    expected = img.read(0, img.size)
    img.close()
    (h,) = open_libvhdi([p])
    try:
        assert h.get_media_size() == len(expected)
        assert h.get_disk_type() == {"fixed": 2, "dynamic": 3}[kind]
        assert h.read_buffer_at_offset(len(expected), 0) == expected
    finally:
        h.close()
