"""Issue 14 item 7: an lvhd SR on a full VG is never wedged.

XenServer's LVHDSR checks the space a snapshot or clone needs before it starts ("There is
insufficient space", SRNoSpace); an operation that still fails half-way is rolled back, which
needs no free space, so the commands that free space (vdi destroy, sr gc) keep working.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from storage.errors import SrError
from storage.sr.sr import SR
from storage.sr.srtypes import lvhd
from storage.sr.srtypes.lvhd import full_vhd_size

MiB = 1 << 20
BLOCK = 2 * MiB


def fill(sr: SR, uuid: str, nblocks: int) -> None:
    """Allocate `nblocks` VHD blocks of the VDI, each starting with its own number."""
    dev = sr.vdi_open(uuid)
    for b in range(nblocks):
        dev.write(b * BLOCK, b"block %05d" % b)
    dev.close()


def check(sr: SR, uuid: str, nblocks: int) -> None:
    dev = sr.vdi_open(uuid, read_only=True)
    try:
        for b in range(nblocks):
            assert dev.read(b * BLOCK, 11) == b"block %05d" % b
    finally:
        dev.close()


@pytest.fixture
def full(tmp_path: Path) -> tuple[SR, str]:
    """An lvhd SR of 128 MiB with a 100 MiB VDI whose 45 blocks hold data: a snapshot's new
    inflated leaf (26 extents) cannot fit next to the deflated base (~23 extents)."""
    sr = SR.create(tmp_path / "sr", type_name="lvhd", device_config={"size": "128M"})
    v = sr.vdi_create("disk0", 100 * MiB)
    fill(sr, v.uuid, 45)
    return sr, v.uuid


def _state(sr: SR) -> tuple[list[str], list[str]]:
    return sorted(sr.vdis), sorted(sr.driver.vg.lv_names())


@pytest.mark.parametrize("op", ["snapshot", "clone"])
def test_snapshot_or_clone_on_a_full_vg_is_refused_before_it_starts(
        full: tuple[SR, str], op: str) -> None:
    sr, uuid = full
    before = _state(sr)
    with pytest.raises(SrError, match="insufficient space"):
        getattr(sr, f"vdi_{op}")(uuid)
    assert sr.pending is None and _state(sr) == before
    sr2 = SR.open(sr.path)
    assert sr2.pending is None and _state(sr2) == before
    check(sr2, uuid, 45)


def test_a_clone_that_could_never_be_inflated_is_refused(tmp_path: Path) -> None:
    """Enough room for the snapshot's own leaf, not for inflating the clone for writing."""
    sr = SR.create(tmp_path / "sr", type_name="lvhd", device_config={"size": "160M"})
    v = sr.vdi_create("disk0", 60 * MiB)
    fill(sr, v.uuid, 25)
    vg = sr.driver.vg
    free = vg.summary().free
    leaf = full_vhd_size(v.virtual_size)
    assert free + vg.lv_size(v.location) - 13 * 4 * MiB < 2 * leaf  # both could not be inflated
    with pytest.raises(SrError, match="insufficient space"):
        sr.vdi_clone(v.uuid)
    snap = sr.vdi_snapshot(v.uuid)  # a snapshot is never inflated: that one fits
    check(sr, snap.uuid, 25)


def test_an_interrupted_snapshot_on_a_full_vg_rolls_back_and_the_sr_works(
        full: tuple[SR, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A pending snapshot whose roll-forward needs space it cannot get (the state an older
    hvsim left): opening the SR rolls it back, with no free space at all."""
    sr, uuid = full
    before = _state(sr)
    monkeypatch.setattr(lvhd.LvhdSRDriver, "_check_space", lambda *a, **k: None)
    monkeypatch.setattr(lvhd.LvhdSRDriver, "_roll_back_snapshot",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # the process dies instead of rolling back
        sr.vdi_snapshot(uuid)
    monkeypatch.undo()
    assert SR._read_meta(sr.path)["pending"]["op"] == "snapshot"
    sr2 = SR.open(sr.path)  # recovery: the roll-forward cannot get space; roll back
    assert sr2.pending is None and _state(sr2) == before
    check(sr2, uuid, 45)
    v = sr2.vdi(uuid)
    assert v.parent is None
    # the commands that free space work
    other = sr2.vdi_create("small", 4 * MiB)
    sr2.vdi_destroy(other.uuid)
    sr2.gc()
    sr2.scan()
    sr2.vdi_destroy(uuid)
    assert sr2.vdis == {}


def test_a_snapshot_that_fails_for_space_mid_way_is_rolled_back_at_once(
        full: tuple[SR, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sr, uuid = full
    before = _state(sr)
    monkeypatch.setattr(lvhd.LvhdSRDriver, "_check_space", lambda *a, **k: None)
    with pytest.raises(SrError, match="insufficient space"):
        sr.vdi_snapshot(uuid)
    assert SR._read_meta(sr.path)["pending"] is None
    assert _state(sr) == before
    check(sr, uuid, 45)
    fill(sr, uuid, 45)  # still writable (inflated again)
