"""Broker faults through the multi-host data plane against a real mosquitto: a killed and
restarted broker, a host cut off, malformed and oversized messages on a data topic, and a host
publishing under another host's name."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench._rel import brokerfaults as bf

pytestmark = pytest.mark.interop


async def test_broker_killed_mid_stream_every_frame_received_or_counted(tmp_path: Path) -> None:
    r = await bf.broker_killed(tmp_path, down_s=0.5, seconds=2.5)
    assert r["unaccounted"] == 0, r
    assert r["lost_counted"] > 0 and r["received_after_fault"], r
    assert r["tx_connects"] >= 2 and r["rx_connects"] >= 2, r


async def test_host_cut_off_reconnects_alone(tmp_path: Path) -> None:
    r = await bf.host_outage(tmp_path, down_s=2.0, seconds=4.0)
    assert r["survived"], r
    assert r["rx_connects"] == 1 and r["tx_connects"] >= 2


async def test_malformed_and_oversized_messages_are_counted_not_fatal(tmp_path: Path) -> None:
    r = await bf.malformed(tmp_path)
    assert r["bad_batches"] == 3 and r["frames_after"] == 3, r
    assert "exceeds" in r["last_error"]


async def test_a_host_cannot_publish_as_another(tmp_path: Path) -> None:
    r = await bf.impersonation(tmp_path)
    assert r["survived"], r
    assert r["forged_batches"] == 1 and r["accepted_batches"] == 1
