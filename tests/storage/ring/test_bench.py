"""Smoke run of `hvsim bench ring`: the figures exist and are sane."""
from __future__ import annotations

from bench import ring


def test_bench_ring_quick() -> None:
    r = ring.run(quick=True)
    for key in ("direct_iops", "in_process_iops", "cross_process_iops"):
        assert r[key] > 0
    # the ratio is of the unrounded rates: allow the 4-digit rounding plus what rounding each
    # rate to a whole number moves it by (0.5/direct, and ratio*0.5/direct)
    ratio, direct = r["in_process_vs_direct"], r["direct_iops"]
    assert abs(ratio - r["in_process_iops"] / direct) <= 5e-5 + (0.5 + 0.5 * ratio) / direct
    # event suppression: with 32 reads in flight, well under one notification per request
    assert r["in_process_notifications_per_request"]["front_to_back"] < 0.5
    assert r["cross_process_notifications_per_request"]["back_to_front"] < 1
    us = r["in_process_us_per_request"]
    assert 0 < us["of_which_disk_read"] <= us["backend_handle"] <= us["total"]
