"""Many host agents per process (`hvsim host --names-from`) on a real mosquitto: a push reaches
every host, a migration crosses processes, nothing but keep-alives flows when idle, and a host
without its configuration keeps waiting (through a broker restart) instead of leaving."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _fleet
from netsim.vds import multihost
from netsim.vds.dswitch import Peers
from netsim.vds.multihost import Lab, push_config, run_hosts
from netsim.vds.transport.mqtt import MqttBus
from netsim.vds.transport.topics import Topics

pytestmark = pytest.mark.interop

TOPO = Path(__file__).resolve().parents[2] / "topologies" / "three-hosts.yaml"


async def test_fifty_hosts_in_two_processes_push_migrate_and_idle_quietly(
        tmp_path: Path) -> None:
    ka = 2
    r = await _fleet.measure(tmp_path, n_hosts=50, n_procs=2, n_portgroups=50, keepalive=ka,
                             steady_keepalives=3)
    assert r.push_reached == 50  # every host reported the pushed version
    assert r.change_s > 0 and r.migrate_s > 0  # v2 reached all; the VM crossed processes
    # idle: no host publishes anything (no heartbeats, no status refreshes) ...
    assert r.steady_publishes == 0 and r.steady_seen_on_fabric == 0
    # ... and each host connection sends one PINGREQ per keep-alive. The 2 shared reading
    # connections and the observer ping every 60 s. $SYS counters tick each second, so a
    # window of W s may catch one more ping per connection than W/ka.
    w = r.steady_window_s
    assert w >= 2 * ka
    bound = 50 * (w / ka + 1) + 3 * (w / 60 + 1)
    assert r.steady_packets <= bound, r
    assert r.steady_packets >= 50 * (w / ka - 1)  # the count is real: the hosts did ping
    assert 0 < r.rss_kib_per_agent_marginal < 8 * 1024


def test_config_wait_gives_up_with_one_line(mqtt_broker) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "netsim", "host", "--name", "esx1", "--broker", mqtt_broker.url,
         "--config-wait", "1", str(TOPO)], capture_output=True, text=True, timeout=60,
        check=False)
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and "Traceback" not in err, err
    assert "esx1: dvs1 version 1 not received within 1.0 s" in err


async def test_hosts_without_config_keep_waiting_through_a_broker_restart(
        mqtt_broker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.setattr(multihost, "CONFIG_REMINDER_S", 0.3)
    lab = Lab(mqtt_broker.settings())
    topics = Topics("lab")
    topo = tmp_path / "two.yaml"
    _fleet.write_topology(topo, 2, 3)
    hosts = asyncio.create_task(run_hosts(topo, ["esx1", "esx2"], lab, duration=None))
    try:
        async with MqttBus(mqtt_broker.settings(), client_id="observer") as bus:
            peers = Peers(topics)
            async with bus.subscribe(topics.all_presence, qos=1) as pres, \
                    bus.subscribe(topics.all_status, qos=1) as stat:
                async def feed(sub) -> None:
                    async for m in sub:
                        peers.handle(m)

                feeds = [asyncio.create_task(feed(s)) for s in (pres, stat)]
                await peers.wait_until(lambda: peers.online() == {"esx1", "esx2"},
                                       within_s=15, what="both hosts online")
                await asyncio.sleep(0.5)
                await asyncio.to_thread(mqtt_broker.restart, 1.5)  # retained state is lost
                await peers.wait_until(lambda: peers.online() == {"esx1", "esx2"},
                                       within_s=15, what="both hosts back")
                assert not hosts.done()
                await push_config(topo, lab, wait_s=15)
                await peers.wait_until(
                    lambda: all(peers.version(h, "dvs1") == 1 for h in ("esx1", "esx2")),
                    within_s=15, what="both hosts run v1")
                for t in feeds:
                    t.cancel()
    finally:
        hosts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hosts
    err = " ".join(capsys.readouterr().err.split())
    assert "2 of 2 hosts still wait for dvs1's configuration" in err
    assert "the broker is not reachable, retrying" in err
