"""Smoke run of `hvsim bench ring`: the figures exist and are sane."""
from __future__ import annotations

from bench import ring


def test_bench_ring_quick() -> None:
    r = ring.run(quick=True)
    for key in ("direct_iops", "in_process_iops", "cross_process_iops"):
        assert r[key] > 0
    assert r["in_process_vs_direct"] == round(r["in_process_iops"] / r["direct_iops"], 4)
    # event suppression: with 32 reads in flight, well under one notification per request
    assert r["in_process_notifications_per_request"]["front_to_back"] < 0.5
    assert r["cross_process_notifications_per_request"]["back_to_front"] < 1
    us = r["in_process_us_per_request"]
    assert 0 < us["of_which_disk_read"] <= us["backend_handle"] <= us["total"]
