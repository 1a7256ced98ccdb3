"""MAC flapping and LAG state as users see them: the report of a scenario, the output of
`hvsim run` and `hvsim replay`, and `hvsim trace`."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from netsim.lab.lab import Lab
from netsim.lab.topology import load_topology
from netsim.scenario.model import load_scenario
from netsim.scenario.runner import run_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "topologies" / "scenarios"


def hvsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsim", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT),
                                                       "PATH": "/usr/bin:/bin", "COLUMNS": "200"})


async def test_ip_hash_without_a_channel_reports_the_flapping_mac(tmp_path: Path) -> None:
    report = await run_scenario(load_scenario(SCENARIOS / "ip-hash-flapping.yaml"),
                                out_dir=tmp_path)
    assert report.passed, report.to_json()
    tor = report.mac_flaps["tor"]
    # four frames alternating vmnic0 / vmnic1 / vmnic0 / vmnic1: three moves of web1's MAC
    assert tor["moves"] == 3
    assert tor["hosts"] == [{"vlan": 10, "mac": "00:50:56:00:00:01", "moves": 3,
                             "ports": ["esx1.vmnic0", "esx1.vmnic1"]}]
    assert '"mac_flaps"' in (tmp_path / "report.json").read_text()


def test_hvsim_replay_and_run_print_moves_and_lags(tmp_path: Path) -> None:
    r = hvsim("replay", str(SCENARIOS / "ip-hash-flapping.yaml"), "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "MAC flapping on tor: 3 move(s)" in r.stdout
    assert ("host 00:50:56:00:00:01 in VLAN 10 is flapping between esx1.vmnic0 and "
            "esx1.vmnic1: 3 move(s)") in r.stdout
    r = hvsim("run", "topologies/lacp-lag.yaml", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    for line in ("LAG esx1/lag1 (lacp): up; vmnic0 current distributing, vmnic1 current "
                 "distributing", "LAG core/Po2 (lacp): up; xen1.eth0 current distributing, "
                 "xen1.eth1 current distributing"):
        assert line in r.stdout, r.stdout
    assert "MAC flapping on core" not in r.stdout


async def test_trace_names_the_lag_member_and_the_mac_move() -> None:
    topo = load_topology(SCENARIOS / "ip-hash.topology.yaml")
    async with Lab(topo) as lab:
        r = await lab.pingall(wait_s=1.0)
        assert r.answered == r.pairs
        # web1 → srv leaves by one uplink, → srv2 by the other (IP hash): the trace that
        # arrives on the port tor did not learn web1 on says the MAC moves; the other does not
        learned = lab.fabric["tor"].mac_table.get_entry((10, bytes.fromhex("005056000001")))
        traces = []
        for mac, ip in (("00:16:3e:00:00:21", "10.0.10.21"), ("00:16:3e:00:00:22", "10.0.10.22")):
            traces.append(lab.trace("web1", {"eth": {"dst": mac}, "udp": {"dport": 9},
                                             "ipv4": {"src": "10.0.10.11", "dst": ip}}))
    hops = [next(h for h in t.hops if h.switch == "tor") for t in traces]
    assert sorted(h.in_port for h in hops) == ["esx1.vmnic0", "esx1.vmnic1"]
    for h, t in zip(hops, traces, strict=True):
        if h.in_port == learned.port.name:
            assert h.learn == ""
        else:
            assert h.learn.startswith(f"00:50:56:00:00:01 moves from {learned.port.name} to "
                                      f"{h.in_port}: MAC flapping"), h.learn
            assert "MAC learning: 00:50:56:00:00:01 moves from" in t.render()

    topo = load_topology(ROOT / "topologies" / "lacp-lag.yaml")
    async with Lab(topo) as lab:
        await lab.drive(asyncio.sleep(0))
        t = lab.trace("web1", {"eth": {"dst": "ff:ff:ff:ff:ff:ff"}, "udp": {"dport": 9},
                               "ipv4": {"src": "10.30.0.11", "dst": "10.30.0.21"}})
    text = t.render()
    assert "(member of lag1, srcDestIpTcpUdpPortVlan hash over 2 member(s))" in text, text
    assert "(member of Po2, srcDestIpTcpUdpPort hash over 2 member(s))" in text, text
    assert "app1" in " ".join(t.delivered) or "vif1.0" in t.delivered


async def test_lacp_timers_scenario_changes_the_rate_live_and_times_out_a_member(
        tmp_path: Path) -> None:
    report = await run_scenario(load_scenario(SCENARIOS / "lacp-timers.yaml"), out_dir=tmp_path)
    assert report.passed, report.to_json()
    assert {"step": 0, "kind": "lag", "target": "core/Po2", "rate": "fast"} in report.steps
    po1 = report.lags["core/Po1"]["members"]
    assert [(m["member"], m["distributing"]) for m in po1] == [
        ("esx1.vmnic0", False), ("esx1.vmnic1", True)]
    assert report.lags["core/Po2"]["rate"] == "fast"


@pytest.mark.parametrize(("step", "message"), [
    ("{port: core/Po2, rate: medium}", "steps[0].lag.rate: lacp rate 'medium' must be fast or "
                                       "slow"),
    ("{port: core/Po2, mode: balance-tcp}", "steps[0].lag.mode: lag mode 'balance-tcp' is not "
                                            "one of"),
    ("{port: core/Po2}", "steps[0].lag: change something"),
    ("{port: xen1/bond0, lacp_fallback_ab: maybe}", "steps[0].lag.lacp_fallback_ab: "
                                                   "lacp_fallback_ab 'maybe' must be true or "
                                                   "false"),
    ("{port: core, rate: fast}", "steps[0].lag.port: 'core' is a PhysicalSwitch, not a LAG"),
])
def test_bad_lag_steps_give_one_clear_error(tmp_path: Path, step: str, message: str) -> None:
    (tmp_path / "s.yaml").write_text(
        f"name: s\ntopology: {ROOT / 'topologies' / 'lacp-lag.yaml'}\nduration: 1s\n"
        f"steps:\n  - {{at: 0s, lag: {step}}}\n")
    r = hvsim("replay", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
