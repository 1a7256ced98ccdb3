"""The scenario step `move_vm` / `migrate: {vm, to}`: vMotion inside one lab, checked by the
scenario runner's own expectations."""
from __future__ import annotations

from pathlib import Path

import pytest

from netsim.dataplane.vclock import VirtualClock
from netsim.errors import ScenarioError
from netsim.scenario.model import parse_scenario
from netsim.scenario.runner import run_scenario

from ..scenario.conftest import MAC_A, MAC_B, two_esx

SCENARIO = f"""
steps:
  - {{at: 1ms, send: {{from: b, frame: {{eth: {{src: "{MAC_B}"}}, payload: 20}}}}}}
  - {{at: 5ms, migrate: {{vm: b, to: esx1}}}}
  - {{at: 10ms, send: {{from: a, count: 3, interval: 1ms,
                       frame: {{eth: {{src: "{MAC_A}", dst: "{MAC_B}"}}, payload: 20}}}}}}
expect:
  - arrives: {{at: a.eth0, match: "ether proto 0x8035 and ether src {MAC_B}", count: 1,
              after: 5ms}}
  - arrives: {{at: b.eth0, match: "ether src {MAC_A}", count: 3, after: 10ms}}
  - never: {{at: esx2/vmnic0, match: "ether src {MAC_A}"}}
"""


async def test_migrated_vm_is_reached_on_its_new_host(tmp_path: Path) -> None:
    scn = parse_scenario(SCENARIO, "t.yaml", base=tmp_path)
    fab = two_esx(VirtualClock())
    report = await run_scenario(scn, fabric=fab, out_dir=tmp_path / "out")
    assert report.passed, report.to_json()
    assert fab["b"].host.name == "esx1"  # and a's frames stayed on esx1's switch


def test_unknown_destination_is_named(tmp_path: Path) -> None:
    scn = parse_scenario(SCENARIO.replace("to: esx1", "to: esx9"), "t.yaml", base=tmp_path)
    with pytest.raises(ScenarioError, match=r"t.yaml:4: steps\[1\].migrate.to: no host 'esx9'"):
        scn.check(two_esx(VirtualClock()))
