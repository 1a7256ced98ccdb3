"""Fixtures for the LVM tests: PV files in tmp_path and a VG over them."""
from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.lvm import VolumeGroup, pvcreate

MiB = 1 << 20


@pytest.fixture
def pv_files(tmp_path: Path) -> list[Path]:
    """Two 64 MiB PV files (15 extents of 4 MiB each)."""
    paths = [tmp_path / "pv0.img", tmp_path / "pv1.img"]
    rng = random.Random(7)
    for p in paths:
        pvcreate(p, size=64 * MiB, rng=rng)
    return paths


@pytest.fixture
def vg(pv_files: list[Path]) -> Iterator[VolumeGroup]:
    """VG `vg0` over the two PVs."""
    g = VolumeGroup.create("vg0", pv_files, rng=random.Random(8))
    yield g
    g.close()


def reopen(g: VolumeGroup, pv_files: list[Path]) -> VolumeGroup:
    """Close `g` and open its VG again from the files."""
    name = g.name
    g.close()
    return VolumeGroup.open(name, pv_files)
