"""`hvsim bench switch --quick` runs and reports sane figures (not a timed test)."""
from __future__ import annotations

from bench import switch


def test_quick_bench_reports_every_figure() -> None:
    res = switch.run(quick=True)
    for key in ("hop_64_fps", "hop_1500_fps", "hop_64_capture_fps", "scapy_hop_64_fps",
                "queue_hop_64_fps", "ratio_vs_scapy", "ratio_vs_queue", "pcapng_records_per_s",
                "pcapng_dpkt_records_per_s", "hop_64_erspan_fps", "hop_64_ipfix_fps",
                "hop_64_beacon_fps", "ratio_beacon_vs_hop", "hop_64_lbt_fps", "ratio_lbt_vs_hop"):
        assert res[key] > 0, key
    assert res["ratio_vs_scapy"] > 1  # bytes beat a Scapy object per frame, by far
    assert set(res["met"]) == set(res["targets"])
