"""The `mirror` scenario step turns a mirroring session off and on at run time."""
from __future__ import annotations

from pathlib import Path

import pytest

from netsim.errors import ScenarioError
from netsim.scenario.model import load_scenario, parse_scenario
from netsim.scenario.runner import run_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "topologies" / "scenarios"
FILE = SCENARIOS / "mirror-session.yaml"


async def test_the_shipped_mirror_scenario_passes(tmp_path: Path) -> None:
    report = await run_scenario(load_scenario(FILE), out_dir=tmp_path)
    assert report.passed, report.to_json()
    assert [s["enabled"] for s in report.steps if s["kind"] == "mirror"] == [False, True]


async def test_without_the_off_step_the_copies_keep_coming(tmp_path: Path) -> None:
    text = "\n".join(line for line in FILE.read_text().splitlines()
                     if "enabled: false" not in line)
    report = await run_scenario(parse_scenario(text, "m.yaml", base=SCENARIOS),
                                out_dir=tmp_path)
    assert not report.passed
    failed = [r for r in report.results if not r.passed]
    assert [r.name for r in failed] == ["none while off"]


@pytest.mark.parametrize(("new", "msg"), [
    ("session: nope, enabled: false",
     r"no mirror session 'nope' on esx1/dvs1 \(sessions: db-erspan, web-rspan\)"),
    ("session: web-rspan, enabled: perhaps", "mirror.enabled: expected true or false"),
    ("session: web-rspan", "enabled"),
])
async def test_bad_mirror_steps_name_the_line(new: str, msg: str, tmp_path: Path) -> None:
    text = FILE.read_text().replace("session: web-rspan, enabled: false", new)
    with pytest.raises(ScenarioError, match=msg) as exc:
        await run_scenario(parse_scenario(text, "m.yaml", base=SCENARIOS), out_dir=tmp_path)
    assert "m.yaml:" in str(exc.value)
