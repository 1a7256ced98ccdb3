"""Fixtures for the VHD tests: small image files in tmp dirs."""
from __future__ import annotations

from pathlib import Path

import pytest

from storage.vhd import chain

MiB = 2**20


@pytest.fixture
def base_vhd(tmp_path: Path) -> Path:
    """A 4 MiB dynamic VHD (1 MiB blocks) with b'base' at offset 0 and 3 MiB."""
    p = tmp_path / "base.vhd"
    img = chain.create_image(p, size=4 * MiB, block_size=MiB)
    img.write(0, b"base")
    img.write(3 * MiB, b"base")
    img.close()
    return p
