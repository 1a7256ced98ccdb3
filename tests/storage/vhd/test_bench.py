"""Smoke run of `hvsim bench storage --quick`: the figures exist and the exports agree."""
from __future__ import annotations

from bench import storage


def test_quick_bench_reports_sane_figures() -> None:
    res = storage.run(quick=True)
    assert res["export"]["identical_output"] is True      # our export == qemu-img convert
    assert res["allocated_fraction"] == 0.5
    for key in ("qemu_img_MiB_s", "hvsim_cli_MiB_s", "hvsim_inprocess_MiB_s", "ratio_cli"):
        assert res["export"][key] > 0
    assert res["chain"]["ratio"] > 0
    assert set(res["export"]["cpu_s"]) == {"qemu", "cli", "inproc"}
    imp = res["vdi"]["import_raw"]
    assert imp["cpu_s"]["hvsim"] > 0 and imp["ratio"] > 0
    # as sparse as qemu-img (the same blocks; per block at most a page apart: the bitmap's)
    assert imp["hvsim_file_bytes"] <= imp["qemu_file_bytes"] + 32 * 4096
    iops = res["iops_4k"]
    assert set(iops) == {"raw_read", "raw_write", "raw_write2", "dynamic_read", "dynamic_write",
                         "dynamic_write2", "filled_write", "chain16_read", "chain16_write"}
    assert all(v > 0 for v in iops.values())
