"""Smoke run of bench/replay.py: the figures are there and sane (not a timing test)."""
from __future__ import annotations

from bench import replay


def test_replay_bench_quick() -> None:
    out = replay.run(quick=True)
    assert out["frames"] == 20_000
    for key in ("fast_frames_per_s", "baseline_inject_only_frames_per_s",
                "baseline_read_ours_frames_per_s", "baseline_read_dpkt_frames_per_s",
                "virtual_original_timing_frames_per_s"):
        assert out[key] > 0, key
    assert out["realtime_frames"] == 300
    assert 0 <= out["realtime_offset_us_p50"] <= out["realtime_offset_us_max"]
    assert 0.0 < out["realtime_within_1ms"] <= 1.0
