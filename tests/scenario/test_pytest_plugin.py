"""The pytest plugin as a user meets it: a test file of their own, run by pytest with our plugin."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

USER_TESTS = '''
import pytest
from scapy.all import IP, UDP, Dot1Q, Ether

from netsim.lab.fabric import Fabric
from netsim.dataplane.policy import VlanPolicy
from netsim.dataplane.switch import PortGroup


def two_hosts(clock):
    fab = Fabric(clock=clock)
    for h in ("esx1", "esx2"):
        host = fab.add_host(h)
        sw = host.add_switch("vSwitch0")
        sw.add_port_group(PortGroup("web", vlan=10))
        sw.add_port_group(PortGroup("db", vlan=20))
        sw.add_uplink(host.add_pif("vmnic0"))
    fab.add_physical_switch("phys")
    for h in ("esx1", "esx2"):
        fab.link(f"{h}/vmnic0", fab.add_port("phys", h, VlanPolicy.trunk(10, 20)))
    fab["esx1"].add_vm("web1").add_nic("vSwitch0", "web", mac="00:50:56:00:00:01")
    fab["esx2"].add_vm("web2").add_nic("vSwitch0", "web", mac="00:50:56:00:00:02")
    fab["esx2"].add_vm("db1").add_nic("vSwitch0", "db", mac="00:50:56:00:00:03")
    return fab


BCAST = (Ether(src="00:50:56:00:00:01", dst="ff:ff:ff:ff:ff:ff")
         / IP(src="10.0.0.1", dst="10.0.0.255") / UDP(dport=9))


@pytest.mark.asyncio
@pytest.mark.hvsim(builder=two_hosts)
async def test_web_vlan_stays_in_web(fabric, send, expect):
    await send("web1", BCAST)
    [pkt] = await expect.arrives("web2", "udp dst port 9")
    assert pkt[IP].src == "10.0.0.1" and not pkt.haslayer(Dot1Q)
    [wire] = await expect.arrives("esx1/vmnic0", "vlan 10 and udp")
    assert wire[Dot1Q].vlan == 10
    await expect.never("db1", "udp")
    assert expect.counter("web1", "rx_frames") == 1
    assert len(fabric.received("web2")) == 1


@pytest.mark.asyncio
@pytest.mark.hvsim(builder=two_hosts)
async def test_counter_is_awaitable_like_its_siblings(fabric, expect):
    fabric["web1"].ports[0].receive(bytes(BCAST))   # in flight: not yet switched
    assert expect.counter("web2", "tx_frames") == 0   # the sync form: the value now
    assert await expect.counter("web2", "tx_frames") == 1   # awaited: once frames landed
    assert await expect.counter("db1", "drops") == 0


@pytest.mark.asyncio
@pytest.mark.hvsim(builder=two_hosts)
async def test_spec_dicts_and_time(fabric, send, expect):
    t0 = fabric.clock.now_ns()
    await send("web1", {"eth": {"src": "00:50:56:00:00:01"}, "payload": 10}, count=3,
               interval="1h")
    assert fabric.clock.now_ns() - t0 == 2 * 3600 * 10**9
    await expect.arrives("web2", "ether src 00:50:56:00:00:01", count=3)


@pytest.mark.asyncio
@pytest.mark.hvsim(builder=two_hosts)
async def test_a_failing_expectation_says_what_it_saw(send, expect):
    await send("web1", BCAST)
    await expect.arrives("db1", "udp")
'''


def _plugin_args() -> list[str]:
    """Installed hvsim registers the plugin through its pytest11 entry point (as users get it);
    a source checkout that is not installed names it with -p."""
    installed = any(ep.value == "netsim.scenario.pytest_plugin"
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "netsim.scenario.pytest_plugin"]


def test_a_users_test_file_runs_with_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *_plugin_args(), "-q",
         "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    text = out.stdout + out.stderr
    assert "1 failed, 3 passed" in text, text
    assert "DeprecationWarning" not in text and "warning" not in text.lower(), text
    assert ("db1: expected at least 1 frame(s) matching 'udp' within 50ms, got 0 (0 frame"
            in text), text


def test_a_projects_own_asyncio_loop_scope_is_kept(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = bogus\n")
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *_plugin_args(), "-q", "-p", "no:cacheprovider",
         "test_user.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    # the project's (invalid) value reached pytest-asyncio, which refuses it: we did not mask it
    assert "'bogus' is not a valid asyncio_default_fixture_loop_scope" in out.stderr, out.stderr


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"]["hvsim"] == "netsim.scenario.pytest_plugin"


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Testing your VLAN plan with pytest"):]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 8 <= len([ln for ln in code.splitlines() if ln.strip()]) <= 12
    (tmp_path / "topologies").mkdir()
    (tmp_path / "topologies" / "xen-vlans.yaml").write_text(
        (ROOT / "topologies" / "xen-vlans.yaml").read_text())
    (tmp_path / "test_readme.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *_plugin_args(), "-q",
         "-p", "no:cacheprovider", "test_readme.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert "1 passed" in out.stdout, out.stdout + out.stderr
