"""The vDS health check on a running topology: VLANs a physical port does not trunk, MTU
mismatches, the teaming check, and `hvsim health-check` (table, --json, exit status)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netsim.dataplane.policy import LoadBalancing, TeamingPolicy
from netsim.lab.healthcheck import HealthReport, esxi_switches, health_check, teaming_check
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology

# ESXi hosts with App (VLAN 10) and DB (VLAN 20) on a jumbo vSwitch, each host's vmnic0 on
# its own port of one physical switch.
HOST = """  {h}:
    type: esxi
    pifs: {{vmnic0: {{mtu: 9000}}}}
    switches: {{vSwitch0: {{uplinks: [vmnic0], mtu: 9000}}}}
    port_groups: {{App: {{vlan: 10}}, DB: {{vlan: 20}}}}
"""
GOOD = "{mode: trunk, vlans: [10, 20], mtu: 9000}"


def topo(*ports: str) -> str:
    """A topology of len(ports) hosts (default 3), host n's physical port set to ports[n-1]."""
    ports = ports or (GOOD, GOOD, GOOD)
    names = [f"esx{i + 1}" for i in range(len(ports))]
    return ("name: hc\nhosts:\n" + "".join(HOST.format(h=h) for h in names)
            + "physical:\n  tor:\n    ports:\n"
            + "".join(f"      {h}.vmnic0: {p}\n" for h, p in zip(names, ports, strict=True)))


async def check(text: str) -> HealthReport:
    t = parse_topology(text)
    async with Lab(t) as lab:
        return await health_check(esxi_switches(t, lab.fabric), lambda: lab.run_for(1.0))


def table(report: HealthReport) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """host -> (VLANs not trunked, MTU mismatch VLANs)."""
    return {u.host: (u.vlans_not_trunked, u.mtu_mismatch_vlans) for u in report.uplinks}


@pytest.mark.parametrize(
    ("ports", "want"),
    [
        ((GOOD, GOOD, GOOD), {"esx1": ((), ()), "esx2": ((), ()), "esx3": ((), ())}),
        # esx2's port lacks VLAN 20: only esx2 is listed (esx1 and esx3 still hear each other)
        ((GOOD, "{mode: trunk, vlans: [10], mtu: 9000}", GOOD),
         {"esx1": ((), ()), "esx2": ((20,), ()), "esx3": ((), ())}),
        # an access port in VLAN 10 drops every tagged frame: both VLANs missing
        ((GOOD, GOOD, "{mode: access, vlan: 10, mtu: 9000}"),
         {"esx1": ((), ()), "esx2": ((), ()), "esx3": ((10, 20), ())}),
        # esx3's port is not jumbo: both VLANs pass small frames, neither passes 9000
        ((GOOD, GOOD, "{mode: trunk, vlans: [10, 20]}"),
         {"esx1": ((), ()), "esx2": ((), ()), "esx3": ((), (10, 20))}),
        # VLAN missing on one port and MTU on another
        (("{mode: trunk, vlans: [20], mtu: 9000}", GOOD, "{mode: trunk, vlans: [10, 20]}"),
         {"esx1": ((10,), ()), "esx2": ((), (10,)), "esx3": ((), (10, 20))}),
    ],
)
async def test_vlan_and_mtu_check_lists_the_uplinks_whose_port_is_wrong(
        ports: tuple[str, str, str], want: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
) -> None:
    report = await check(topo(*ports))
    assert table(report) == want
    assert report.ok == all(v == ((), ()) for v in want.values())
    for u in report.uplinks:
        assert u.mtu == 9000 and u.vlans_checked == (10, 20)
        assert u.physical_port == f"tor/{u.host}.vmnic0"


async def test_with_two_uplinks_either_side_may_be_wrong_and_says_so() -> None:
    report = await check(topo(GOOD, "{mode: trunk, vlans: [10, 20]}"))
    assert table(report) == {"esx1": ((), (10, 20)), "esx2": ((), (10, 20))}
    assert all(u.ambiguous_vlans == (10, 20) for u in report.uplinks)
    assert "this side or the other" in report.rows()[0][-1]


async def test_one_uplink_alone_cannot_be_checked() -> None:
    report = await check(topo(GOOD))
    (u,) = report.uplinks
    assert u.ok and u.unknown_vlans == (10, 20)
    assert "unknown, no second uplink" in report.rows()[0][-1]


# -- teaming check: table-driven -----------------------------------------------------------------
TEAM = """name: t
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}, vmnic1: {}, vmnic2: {}, vmnic3: {}}
    switches:
      vSwitch0: {uplinks: [vmnic0, vmnic1], teaming: {policy: POLICY}}
      vSwitch1: {uplinks: [vmnic2]}
      vSwitch2: {uplinks: [vmnic3]}
    port_groups: {App: {vlan: 10, switch: vSwitch0}}
physical:
  tor:
    ports:
      esx1.vmnic0: {mode: trunk, vlans: [10]}
      esx1.vmnic1: {mode: trunk, vlans: [10]}
      esx1.vmnic2: {mode: trunk, vlans: [10]}
      esx1.vmnic3: {mode: trunk, vlans: [10]}
CHANNELS"""


@pytest.mark.parametrize(
    ("policy", "channels", "warning"),
    [
        ("ip-hash", "", "vmnic0, vmnic1 not in any"),
        # (vmnic2 and vmnic3 are lone uplinks of other vSwitches: a channel needs two ports)
        ("ip-hash", "Po1: {ports: [esx1.vmnic0, esx1.vmnic2], mode: on}", "vmnic1 not in any"),
        ("ip-hash", "Po1: {ports: [esx1.vmnic0, esx1.vmnic2], mode: on}, Po2: {ports: "
                    "[esx1.vmnic1, esx1.vmnic3], mode: on}", "they are in tor/Po1, tor/Po2"),
        ("ip-hash", "Po1: {ports: [esx1.vmnic0, esx1.vmnic1], mode: on}", None),
        ("port-id", "", None),
        ("src-mac", "Po1: {ports: [esx1.vmnic0, esx1.vmnic1], mode: on}",
         "vmnic0, vmnic1 in a port-channel"),
    ],
)
def test_teaming_check(policy: str, channels: str, warning: str | None) -> None:
    text = TEAM.replace("POLICY", policy).replace(
        "CHANNELS", f"    channels: {{{channels}}}\n" if channels else "")
    t = parse_topology(text)
    lab = Lab(t)
    found = teaming_check(esxi_switches(t, lab.fabric))
    if warning is None:
        assert found == []
    else:
        (f,) = found
        assert (f.host, f.switch, f.policy, f.uplinks) == ("esx1", "vSwitch0", policy,
                                                          ("vmnic0", "vmnic1"))
        assert warning in f.message


def test_a_port_group_override_is_checked_too() -> None:
    t = parse_topology(TEAM.replace("POLICY", "port-id").replace("CHANNELS", ""))
    lab = Lab(t)
    sw = lab.fabric["esx1/vSwitch0"]
    g = sw.port_groups["App"]
    sw.update_port_group(type(g)(g.name, g.vlan, teaming=TeamingPolicy(
        load_balancing=LoadBalancing.IP_HASH)))
    (f,) = teaming_check([("esx1", sw)])
    assert f.message.startswith("port group App: IP hash needs")


# -- the command --------------------------------------------------------------------------------
def _hvsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsim", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_table_json_and_exit_status(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(topo(GOOD, "{mode: trunk, vlans: [10], mtu: 9000}", GOOD))
    r = _hvsim("health-check", str(bad))
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["HOST", "SWITCH", "UPLINK", "PHYSICAL", "PORT", "VLANS", "NOT",
                                "TRUNKED", "MTU", "MTU", "MISMATCH", "STATUS"]
    assert lines[2].split() == ["esx2", "vSwitch0", "vmnic0", "tor/esx2.vmnic0", "20", "9000",
                                "-", "mismatch"]
    assert lines[-1] == "teaming: ok"
    r = _hvsim("health-check", str(bad), "--json")
    data = json.loads(r.stdout)
    assert data["ok"] is False and data["teaming"] == []
    assert [u["vlans_not_trunked"] for u in data["uplinks"]] == [[], [20], []]
    good = tmp_path / "good.yaml"
    good.write_text(topo())
    assert _hvsim("health-check", str(good)).returncode == 0


def test_cli_bad_input_is_one_line_and_status_2(tmp_path: Path) -> None:
    r = _hvsim("health-check", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "missing.yaml" in r.stderr and "Traceback" not in r.stderr
    xen = tmp_path / "xen.yaml"
    xen.write_text("name: x\nhosts:\n  xen1: {type: xen, pifs: {eth0: {}}}\n")
    r = _hvsim("health-check", str(xen))
    assert r.returncode == 2 and "no ESXi switch with uplinks" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


async def test_a_link_down_uplink_is_listed_as_such_not_as_missing_vlans() -> None:
    text = topo().replace("  esx3:\n    type: esxi\n    pifs: {vmnic0: {mtu: 9000}}",
                          "  esx3:\n    type: esxi\n    pifs: {vmnic0: {mtu: 9000, up: false}}")
    report = await check(text)
    assert table(report) == {"esx1": ((), ()), "esx2": ((), ()), "esx3": ((), ())}
    assert [u.link_up for u in report.uplinks] == [True, True, False] and not report.ok
    assert report.rows()[2][-1] == "link down"
