"""The LVM benchmark runs and reports sane figures (not a timed test)."""
from __future__ import annotations

import bench.lvm


def test_bench_quick_reports_every_workload() -> None:
    result = bench.lvm.run(quick=True)
    workloads = {"seq_write", "seq_read", "rand4k_write", "rand4k_read"}
    assert set(result["ratio_lv_over_file"]) == workloads
    assert all(v > 0 for v in result["lv_bytes_per_s"].values())
    assert all(v > 0 for v in result["file_bytes_per_s"].values())
    assert result["cow_first_write_bytes_per_s"] > 0
    assert set(result["ratio_lvhd_over_file_sr"]) == workloads
    assert all(v > 0 for v in result["vdi_lvhd_sr_bytes_per_s"].values())
