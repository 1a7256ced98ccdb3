"""Smoke run of `hvsim bench reliability --quick`: every part reports, nothing failed."""
from __future__ import annotations

import pytest

from bench import reliability

pytestmark = pytest.mark.interop  # the broker part runs mosquitto


def test_quick_bench_reports_every_part() -> None:
    r = reliability.run(quick=True)
    assert {"fuzz", "crash", "overload", "ring_fairness", "isolation", "broker_faults",
            "concurrency"} <= set(r)
    assert r["fuzz"]["inputs"] >= 11 * 25 and r["fuzz"]["crashers"] == 0
    assert len(r["fuzz"]["found_and_fixed"]) >= 10
    assert r["crash"]["cut_points"] == r["crash"]["survived"] > 0
    assert r["overload"]["admitted_ratio"] >= 0.8
    assert r["isolation"]["violations"] == 0
    assert r["broker_faults_survived"] == len(r["broker_faults"]) == 2
    cc = r["concurrency"]
    assert [x["kind"] for x in cc["runs"]] == ["file", "lvm", "lvhd"]
    assert all(x["ok"] and x["vdis_checked"] >= 3 for x in cc["runs"] + cc["sigkill"])
