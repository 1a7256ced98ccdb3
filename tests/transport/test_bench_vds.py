"""Smoke run of `hvsim bench vds`: two processes through a private mosquitto, figures sane."""
from __future__ import annotations

import pytest

from bench import vds

pytestmark = pytest.mark.interop


def test_quick_run_moves_every_frame_and_reports_ratios() -> None:
    r = vds.run(quick=True)
    assert r["vds_frames_received"] + r["vds_frames_lost_counted"] == r["vds_frames_sent"]
    assert r["vds_bad_batches"] == 0
    assert r["baseline_received"] > 0 and r["baseline_aiomqtt_msgs_per_s"] > 0
    assert r["rollout_vms"] == 1000 and r["rollout_ports_moved"] == 500
    assert r["e2e_frames_received"] + r["e2e_frames_lost_counted"] + r["e2e_uplink_drops"] == (
        r["e2e_frames_sent"])
    assert 0 < r["rollout_change_s"] < 30
    assert r["trickle_frames_received"] + r["trickle_frames_lost_counted"] == (
        r["trickle_frames_sent"])
    assert r["trickle_frames_per_message"] > 1  # frames sent one per turn still share messages
    assert r["ratio_vs_baseline"] == pytest.approx(
        r["vds_frames_per_s"] / r["baseline_aiomqtt_msgs_per_s"], rel=0.01
    )
    # the fleet (20 hosts in 2 processes with --quick): push reached all, baseline measured
    assert r["fleet_push_hosts_reached"] == r["fleet_hosts"] == 20
    assert r["fleet_push_baseline_plain_mqtt_s"] > 0
    assert r["fleet_push_ratio_vs_baseline"] == pytest.approx(
        r["fleet_push_s"] / r["fleet_push_baseline_plain_mqtt_s"], rel=0.05)
    assert r["fleet_steady_broker_publishes"] == 0 and 0 < r["fleet_migrate_s"] < 30
    assert r["fleet_rss_kib_per_agent"] > r["fleet_rss_kib_per_agent_without_interpreter"] > 0
