"""Power cuts at every durable step of a VHD write, an SR snapshot, an SR gc, a chain coalesce
and an LVM metadata update: after recovery the image/VG opens, `vhd check` is clean and every
sector holds its old or its new data, with every flushed write present."""
from __future__ import annotations

import uuid as uuidlib

import pytest

from bench._rel import crash
from bench._rel.crashio import CrashIO, PowerCut, PowerPlan
from storage.devices.rawio import MemoryIO
from storage.vhd import format as fmt
from storage.vhd.image import VhdImage

SCENARIOS = {sc.name: sc for sc in crash.scenarios()}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_cut_point_survives(name: str) -> None:
    res = crash.sweep(SCENARIOS[name])
    assert res.cut_points > 5
    assert res.failures == []
    assert res.survived == res.cut_points


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_cut_point_survives_a_torn_write(name: str) -> None:
    res = crash.sweep(SCENARIOS[name], torn=True)
    assert res.failures == []


def test_power_plan_counts_steps_and_loses_everything_after_the_cut() -> None:
    inner = MemoryIO(bytes(2048))
    io = CrashIO(inner, PowerPlan(cut_at=2))
    io.pwrite(0, b"a" * 512)
    with pytest.raises(PowerCut):
        io.pwrite(512, b"b" * 512)
    with pytest.raises(PowerCut):
        io.pwrite(1024, b"c" * 512)
    assert bytes(inner.buf[:1536]) == b"a" * 512 + bytes(1024)


def test_write_back_cache_keeps_flushed_writes_only() -> None:
    inner = MemoryIO(bytes(1024))
    io = CrashIO(inner, PowerPlan(cut_at=3, volatile=True, seed=1))
    io.pwrite(0, b"x" * 512)
    io.flush()
    with pytest.raises(PowerCut):
        io.pwrite(512, b"y" * 512)
    assert bytes(inner.buf[:512]) == b"x" * 512


def test_foreign_vhd_footer_ending_an_interrupted_block_does_not_brick_the_image() -> None:
    """Regression: a guest storing a VHD file in its disk wrote a block whose last sector is
    another disk's footer; the power failed before our footer landed. The image refused to
    open ("footer copy differs"); now the foreign footer is recognised as data."""
    io = MemoryIO(name="d.vhd")
    img = VhdImage.create(io, size=1 << 20, block_size=64 << 10, uuid=uuidlib.UUID(int=1))
    img.write(0, b"old" * 100)
    img.close()
    end = io.size() - 512
    foreign = fmt.Footer(disk_type=fmt.DISK_DYNAMIC, current_size=1 << 20,
                         original_size=1 << 20, geometry=(20, 4, 17),
                         uuid=uuidlib.UUID(int=2)).pack()
    # step 1 of an allocation: the new block's data lands past the old footer, nothing more
    io.pwrite(end + 512 + (64 << 10) - 512, foreign)
    img = VhdImage.open(MemoryIO(bytes(io.buf), name="d.vhd"), read_only=True)
    assert img.uuid == uuidlib.UUID(int=1)
    assert any("footer at end of file missing" in w for w in img.warnings)
    assert img.read(0, 300) == b"old" * 100
