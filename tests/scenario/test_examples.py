"""The shipped scenarios pass; `hvsim replay` runs them, fails loudly, and repeats exactly."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from netsim.errors import ScenarioError
from netsim.scenario.model import load_scenario, parse_scenario
from netsim.scenario.runner import run_scenario
from netsim.wire.framespec import build_frame

from .conftest import write_pcap_ns

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "topologies" / "scenarios"
SHIPPED = ["xen-vlan-isolation", "tagged-on-access", "mac-flapping", "mac-overflow",
           "promiscuous", "teaming-failover", "lossy-uplink"]


def hvsim(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsim", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                       "PATH": "/usr/bin:/bin", "COLUMNS": "200"})


@pytest.mark.parametrize("name", SHIPPED)
async def test_shipped_scenario_passes(name: str, tmp_path: Path) -> None:
    report = await run_scenario(load_scenario(SCENARIOS / f"{name}.yaml"), out_dir=tmp_path)
    assert report.passed, report.to_json()
    assert len(report.results) >= 4
    assert (tmp_path / "report.json").is_file()


def write_trace(path: Path, n: int = 20) -> None:
    """A small capture of what vm1 might send: broadcasts and unicast to vm2, 1 ms apart."""
    frames = [build_frame({"eth": {"src": "00:16:3e:00:05:01", "dst": dst},
                           "ipv4": {"src": "10.0.5.1", "dst": "10.0.5.2"},
                           "udp": {"sport": 4000 + i, "dport": 53}, "payload": 20})
              for i, dst in enumerate(["ff:ff:ff:ff:ff:ff", "00:16:3e:00:05:02"] * (n // 2))]
    write_pcap_ns(path, [(1_600_000_000 * 10**9 + i * 10**6, f) for i, f in enumerate(frames)])


async def test_pcap_replay_example_with_a_generated_trace(tmp_path: Path) -> None:
    write_trace(tmp_path / "trace.pcap")
    text = (SCENARIOS / "pcap-replay.yaml").read_text().replace(
        "pcap: trace.pcap", f"pcap: {tmp_path / 'trace.pcap'}")
    scn = parse_scenario(text, "pcap-replay.yaml", base=SCENARIOS)
    report = await run_scenario(scn, out_dir=tmp_path / "out")
    assert report.passed, report.to_json()
    assert report.steps[0]["frames"] == 20
    # 10x: 19 gaps of 1 ms replayed as 0.1 ms each
    from netsim.wire.pcapread import read_capture
    wire = [t for t, f, _ in read_capture(tmp_path / "out" / "eth0.pcapng")
            if f[12:14] == b"\x81\x00" and f[-20:] == bytes(range(20))]
    assert len(wire) == 20 and wire[-1] - wire[0] == 19 * 100_000


def test_cli_same_scenario_twice_gives_identical_files(tmp_path: Path) -> None:
    digests = []
    for out in ("run1", "run2"):
        res = hvsim("replay", str(SCENARIOS / "xen-vlan-isolation.yaml"), "--out",
                    str(tmp_path / out))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "PASS" in res.stdout
        files = sorted((tmp_path / out).iterdir())
        assert {f.name for f in files} >= {"report.json", "vif1.0.pcapng", "eth0.pcapng"}
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    assert digests[0] == digests[1]


def test_cli_failing_expectation_exits_1_with_a_table(tmp_path: Path) -> None:
    text = (SCENARIOS / "xen-vlan-isolation.yaml").read_text().replace(
        "never: {at: vif3.0", "arrives: {at: vif3.0").replace("topology: ../", "topology: ")
    (tmp_path / "s.yaml").write_text(text)
    (tmp_path / "xen-vlans.yaml").write_text((ROOT / "topologies" / "xen-vlans.yaml").read_text())
    res = hvsim("replay", "s.yaml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL" in res.stdout and "0 matching frames" in res.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passed"] is False
    assert [e["passed"] for e in report["expectations"]].count(False) == 1


def test_cli_bad_scenario_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        f"topology: {ROOT / 'topologies' / 'xen-vlans.yaml'}\n"
        "expect:\n  - never: {at: vif9.0}\n")
    res = hvsim("replay", "s.yaml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert "s.yaml:3: expect[0].never.at: no 'vif9.0'" in res.stderr
    assert not (tmp_path / "out" / "report.json").exists()  # failed before running
    res = hvsim("replay", "--pcap", str(tmp_path / "s.yaml"), "--into", "vif1.0",
                str(ROOT / "topologies" / "xen-vlans.yaml"), "--out", "o2", cwd=tmp_path)
    assert res.returncode == 2 and "not a pcap or pcapng capture" in res.stderr, res.stderr


def test_cli_pcap_one_liner(tmp_path: Path) -> None:
    write_trace(tmp_path / "trace.pcap")
    res = hvsim("replay", "--pcap", "trace.pcap", "--into", "vif1.0",
                str(ROOT / "topologies" / "xen-vlans.yaml"), "--speed", "max", "--capture",
                "vif2.0,vif3.0", "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["steps"] == [{"frames": 20, "kind": "replay", "speed": "max", "step": 0,
                                "skipped": {}}]
    from netsim.wire.pcapread import read_capture
    assert len([1 for *_x, i in read_capture(tmp_path / "out" / "vif2.0.pcapng")]) >= 20
    assert list(read_capture(tmp_path / "out" / "vif3.0.pcapng")) == []


def test_pcapng_replayed_into_the_ports_its_interfaces_name(tmp_path: Path) -> None:
    from .test_pcapread import write_pcapng_ns

    f1 = build_frame({"eth": {"src": "00:16:3e:00:05:01"}, "payload": 46})
    f3 = build_frame({"eth": {"src": "00:16:3e:00:41:03"}, "payload": 46})
    t = 1_700_000_000 * 10**9
    records = [(t, f1, 0), (t + 10**6, f3, 1), (t + 2 * 10**6, f1, 0)]
    write_pcapng_ns(tmp_path / "two.pcapng", records, ["vif1.0", "vif3.0"])
    res = hvsim("replay", "--pcap", "two.pcapng", str(ROOT / "topologies" / "xen-vlans.yaml"),
                "--capture", "vif2.0,vif4.0", "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    from netsim.wire.pcapread import read_capture
    assert [f for _, f, _ in read_capture(tmp_path / "out" / "vif2.0.pcapng")] == [f1, f1]
    assert [f for _, f, _ in read_capture(tmp_path / "out" / "vif4.0.pcapng")] == [f3]
    write_pcapng_ns(tmp_path / "bad.pcapng", [(t, f1, 0)], ["vif42.0"])
    res = hvsim("replay", "--pcap", "bad.pcapng", str(ROOT / "topologies" / "xen-vlans.yaml"),
                "--out", "out2", cwd=tmp_path)
    assert res.returncode == 2
    assert "'vif42.0' (no such port); give --into PORT" in res.stderr


async def test_xen_network_vlan_change_is_refused_before_running(tmp_path: Path) -> None:
    text = (f"topology: {ROOT / 'topologies' / 'xen-vlans.yaml'}\n"
            "steps:\n  - {at: 1ms, port_group: {name: vlan5, vlan: 6}}\n")
    with pytest.raises(ScenarioError, match=r"x\.yaml:3: steps\[0\]\.port_group\.vlan: on "
                       "XenServer host xen1 a VLAN network is its own bridge"):
        await run_scenario(parse_scenario(text, "x.yaml"), out_dir=tmp_path)
    assert not (tmp_path / "report.json").exists()
