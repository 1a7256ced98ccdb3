"""`--sync` (`hvsim vhd write/create/resize/coalesce`) and the SR `sync` setting: with a
write-back disk cache (the crash harness's volatile model) a power cut mid-write leaves every
sector old or new only when the allocation steps are fsynced in order."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench._rel import crash
from bench._rel.crash import Scenario, _apply, _check_and_repair, _compare, _read_all
from netsim.cli.app import app
from storage.cli.vhd import vhd_write
from storage.sr.sr import SR
from storage.vhd import chain

KiB, MiB = 1 << 10, 1 << 20
BLOCK = 64 * KiB
WRITE_AT = 5 * BLOCK + 1000      # unaligned, spans four blocks the child has not allocated


def _setup_chain(d: Path) -> dict[str, Any]:
    rng = random.Random(7)
    base = chain.create_image(d / "base.vhd", size=MiB, block_size=BLOCK)
    base.write(0, rng.randbytes(MiB))
    base.close()
    chain.create_image(d / "disk.vhd", parent_path=d / "base.vhd").close()
    data = rng.randbytes(3 * BLOCK)
    (d / "in.bin").write_bytes(data)
    old = _read_all(d / "disk.vhd")
    return {"old": old, "new": bytes(_apply(bytearray(old), [(WRITE_AT, data)]))}


def cli_write_scenario(sync: bool) -> Scenario:
    """`hvsim vhd write [--sync]` into a differencing VHD, on a disk with a write-back cache."""

    def op(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        vhd_write(d / "disk.vhd", offset=str(WRITE_AT), input_=d / "in.bin", sync=sync)

    def verify(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        _check_and_repair(d / "disk.vhd")
        _compare(_read_all(d / "disk.vhd"), st["old"], st["new"], "disk.vhd")

    return Scenario(f"vhd write sync={sync}", _setup_chain, op, verify, volatile=True)


def sr_write_scenario(sync: bool) -> Scenario:
    """A guest write to a snapshotted VDI of a file SR whose `sync` setting is `sync`."""

    def setup(d: Path) -> dict[str, Any]:
        rng = random.Random(3)
        sr = SR.create(d / "sr", type_name="file")
        sr.driver.block_size = BLOCK       # small blocks: the write allocates several
        vdi = sr.vdi_create("disk", MiB)
        dev = sr.vdi_open(vdi.uuid)
        dev.write(0, rng.randbytes(MiB))
        dev.close()
        sr.vdi_snapshot(vdi.uuid)
        sr.set_sync(sync)
        data = rng.randbytes(3 * BLOCK)
        dev = sr.vdi_open(vdi.uuid, read_only=True)
        old = dev.read(0, dev.size)
        dev.close()
        return {"uuid": vdi.uuid, "data": data, "old": old,
                "new": bytes(_apply(bytearray(old), [(WRITE_AT, data)]))}

    def op(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        dev = SR.open(d / "sr").vdi_open(st["uuid"])
        try:
            dev.write(WRITE_AT, st["data"])
            dev.flush()
        finally:
            dev.close()

    def verify(d: Path, st: dict[str, Any], progress: dict[str, Any]) -> None:
        sr = SR.open(d / "sr")
        _check_and_repair(d / "sr" / sr.vdis[st["uuid"]].location)
        dev = sr.vdi_open(st["uuid"], read_only=True)
        try:
            _compare(dev.read(0, dev.size), st["old"], st["new"], "VDI")
        finally:
            dev.close()

    return Scenario(f"SR write sync={sync}", setup, op, verify, volatile=True)


@pytest.mark.parametrize("make", [cli_write_scenario, sr_write_scenario],
                         ids=["cli", "sr"])
def test_sync_survives_power_loss_with_a_write_back_cache_and_default_does_not(make) -> None:
    unsafe = crash.sweep(make(False))
    assert unsafe.cut_points > 3
    assert unsafe.failures, "without fsync barriers some cut should lose the old data"
    assert any("neither old nor new" in f or "lost" in f for f in unsafe.failures)
    safe = crash.sweep(make(True))
    assert safe.cut_points > unsafe.cut_points       # the barriers are extra steps
    assert safe.failures == []


def test_sr_sync_setting_persists_and_is_shown(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["sr", "create", str(tmp_path / "sr"), "--sync"])
    assert res.exit_code == 0, res.output
    assert SR.open(tmp_path / "sr").sync is True
    res = runner.invoke(app, ["sr", "set", str(tmp_path / "sr"), "--no-sync"])
    assert res.exit_code == 0 and "sync=off" in res.stdout
    assert SR.open(tmp_path / "sr").sync is False
