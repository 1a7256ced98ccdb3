"""Three processes at once on file, lvm and lvhd SRs, and SIGKILL in the middle of
gc/snapshot/clone (issue 14, tests and evidence). Harness: bench/_rel/concurrency.py; the long
runs are in `hvsim bench reliability`."""
from __future__ import annotations

import pytest

from bench._rel import concurrency


@pytest.mark.parametrize("kind", concurrency.KINDS)
def test_three_processes_on_one_sr_keep_every_vdi_equal_to_the_model(kind: str) -> None:
    res = concurrency.run_concurrent(kind, workers=3, ops=12, seed=3)
    assert res.errors == [] and res.mismatches == [], res
    assert res.scan_clean
    assert sum(res.done.values()) >= 20 and res.done.get("write", 0) >= 5
    assert res.vdis_checked >= 3


@pytest.mark.parametrize("kind", concurrency.KINDS)
def test_sigkill_during_gc_snapshot_clone_recovers_to_the_model(kind: str) -> None:
    res = concurrency.sigkill_loop(kind, rounds=3, seed=11)
    assert res.mismatches == [] and res.scan_clean, res
    assert res.workers == 3 and res.done.get("killed", 0) >= 2


def test_the_model_check_catches_a_changed_vdi(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The oracle is not blind: one flipped byte in a VDI is reported."""
    from storage.sr.sr import SR

    concurrency.new_sr(tmp_path / "sr", "file")
    sr = SR.open(tmp_path / "sr")
    u = sr.vdi_create("d", concurrency.VDI_SIZE).uuid
    dev = sr.vdi_open(u)
    dev.write(0, concurrency.pattern(5))
    dev.write(70_000, b"!")
    dev.close()
    res = concurrency.ConcurrencyResult("file", 1)
    concurrency.check_sr(tmp_path / "sr", {u: {"0": 5}}, res)
    assert res.mismatches and "byte 70000" in res.mismatches[0]
