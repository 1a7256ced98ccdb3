"""Scenario values that used to end in a traceback (OverflowError, struct.error, rich's
NotRenderableError after the whole run): each is one `file:line: key: message`, exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from netsim.errors import ScenarioError
from netsim.scenario.model import parse_duration, parse_scenario

from .test_examples import ROOT, hvsim

TOPO = ROOT / "topologies" / "xen-vlans.yaml"
FRAME = "{eth: {src: '00:16:3e:00:05:01'}, ipv4: {src: 10.0.5.1, dst: 10.0.5.2}, udp: {}}"


def scn(step: str = "", expect: str = "") -> str:
    step = step or "{send: {from: vif1.0, frame: " + FRAME + "}}"
    text = f"topology: {TOPO}\nsteps:\n  - {step}\n"
    if expect:
        text += f"expect:\n  - {expect}\n"
    return text


@pytest.mark.parametrize("value", [".inf", "'1e400s'", "'1e400'", "1e400", ".nan"])
@pytest.mark.parametrize("where", ["at", "interval", "within", "wait", "duration"])
def test_infinite_times(value: str, where: str) -> None:
    if where == "at":
        text = scn("{at: VALUE, send: {from: vif1.0, frame: " + FRAME + "}}")
        key = r"steps\[0\]\.at"
    elif where == "interval":
        text = scn("{send: {from: vif1.0, count: 2, interval: VALUE, frame: " + FRAME + "}}")
        key = r"steps\[0\]\.send\.interval"
    elif where == "within":
        text = scn(expect="{arrives: {at: vif2.0, within: VALUE}}")
        key = r"expect\[0\]\.arrives\.within"
    elif where == "wait":
        text = scn(expect="{ping: {from: vm1, to: vm2, wait: VALUE}}")
        key = r"expect\[0\]\.ping\.wait"
    else:
        text = "duration: VALUE\n" + scn()
        key = "duration"
    with pytest.raises(ScenarioError, match=rf"^s\.yaml:\d+: {key}: .*(beyond the longest "
                                            r"duration|is not a duration)"):
        parse_scenario(text.replace("VALUE", value), "s.yaml")


def test_long_but_finite_durations_still_parse() -> None:
    assert parse_duration("1e6h") == 3_600_000_000 * 10**9
    assert parse_duration(0) == 0


@pytest.mark.parametrize("rate", [".nan", ".inf", "0"])
def test_rate_must_be_finite(rate: str) -> None:
    with pytest.raises(ScenarioError, match=r"s\.yaml:3: steps\[0\]\.send\.rate: rate must be "
                                            "a positive finite number"):
        parse_scenario(scn("{send: {from: vif1.0, count: 2, rate: " + rate + ", frame: "
                           + FRAME + "}}"), "s.yaml")


@pytest.mark.parametrize("l4,room", [("udp: {}", 65_507), ("tcp: {}", 65_495),
                                     ("icmp: {}", 65_507), ("", 65_515)])
def test_payload_beyond_the_ipv4_total_length(l4: str, room: int) -> None:
    frame = ("{eth: {src: '00:16:3e:00:05:01'}, ipv4: {src: 10.0.5.1, dst: 10.0.5.2}"
             + (", " + l4 if l4 else "") + ", payload: PAYLOAD}")
    ok = scn("{send: {from: vif1.0, frame: " + frame.replace("PAYLOAD", "x" * room) + "}}")
    parse_scenario(ok, "s.yaml")   # the largest that fits
    bad = scn("{send: {from: vif1.0, frame: " + frame.replace("PAYLOAD", "x" * (room + 1)) + "}}")
    with pytest.raises(ScenarioError, match=rf"s\.yaml:3: steps\[0\]\.send\.frame\.payload: "
                                            rf"{room + 1:,} bytes do not fit .* at most {room:,}"):
        parse_scenario(bad, "s.yaml")


def test_payload_with_a_lone_surrogate() -> None:
    frame = FRAME[:-1] + ', payload: "\\ud800"}'
    with pytest.raises(ScenarioError, match=r"s\.yaml:3: steps\[0\]\.send\.frame\.payload: "
                                            "text '.ud800' at character 0 cannot be UTF-8"):
        parse_scenario(scn("{send: {from: vif1.0, frame: " + frame + "}}"), "s.yaml")


@pytest.mark.parametrize("expect", ["{name: 5, never: {at: vif3.0}}",
                                    "{never: {at: vif3.0, name: 5}}"])
def test_expectation_name_must_be_text(expect: str) -> None:
    with pytest.raises(ScenarioError, match=r"s\.yaml:5: expect\[0\](\.never)?\.name: expected "
                                            "a name, got 5"):
        parse_scenario(scn(expect=expect), "s.yaml")


def test_cli_exits_2_with_one_line_before_running(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(scn(expect="{name: 5, never: {at: vif3.0}}"))
    res = hvsim("replay", "s.yaml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert "\n" not in err and "Traceback" not in err and "NotRenderable" not in err, err
    assert "s.yaml:5: expect[0].name: expected a name, got 5" in err
    assert not (tmp_path / "out" / "report.json").exists()
