"""`hvsim bench impair --quick` runs and reports every figure (not a timed test)."""
from __future__ import annotations

from bench import impair


def test_quick_impair_bench_reports_every_figure() -> None:
    res = impair.run(quick=True)
    assert res["hop_unimpaired_frames_per_s"] > 0 and res["hop_impaired_frames_per_s"] > 0
    assert 0 < res["hop_ratio_impaired_to_unimpaired"] and 0 < res["hop_ratio_cpu_time"]
    # 1 % loss of 360,000 frames: 3,600 +- 3 x 60
    assert abs(res["link_lost"] - 3600) < 180
    assert res["link_wall_s_per_virtual_hour"] > 0
    assert res["fabric_stream_frames_delivered"] > 0.97 * 10_000
    assert res["realtime_frames"] == 500
    assert res["realtime_late_us_p50"] >= 0
