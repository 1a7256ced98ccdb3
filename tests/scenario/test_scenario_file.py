"""Scenario files: every mistake is reported as file:line: key: message, before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from netsim.dataplane.vclock import VirtualClock
from netsim.errors import ScenarioError
from netsim.scenario.model import (
    Arrives,
    CounterCheck,
    LinkEvent,
    Replay,
    Send,
    parse_duration,
    parse_scenario,
)

from .conftest import MAC_A, two_esx

GOOD = f"""\
name: good
capture: [a.eth0]
duration: 5s
steps:
  - at: 1ms
    send:
      from: a
      count: 3
      rate: 2k/s
      frame: {{eth: {{src: "{MAC_A}"}}, vlan: 10, payload: 8}}
  - {{at: 2s, link: {{port: esx1/vmnic0, state: down}}}}
  - {{at: 3s, replay: {{pcap: t.pcap, into: a, speed: 10x}}}}
expect:
  - arrives: {{at: b.eth0, match: "ether src {MAC_A}", after: 1ms, within: 10ms, count: 3}}
  - counter: {{port: esx1/vmnic0, name: drops.link-down, ge: 0, at: 4s}}
"""


def test_a_good_file_becomes_a_model(tmp_path: Path) -> None:
    scn = parse_scenario(GOOD, "good.yaml", base=tmp_path)
    send, link, replay = scn.steps
    assert isinstance(send, Send) and send.count == 3 and send.interval_ns == 500_000
    assert send.frame[12:16] == b"\x81\x00\x00\x0a"
    assert isinstance(link, LinkEvent) and not link.up and link.at_ns == 2 * 10**9
    assert isinstance(replay, Replay) and replay.speed == 10.0
    assert replay.pcap == tmp_path / "t.pcap"
    arrives, counter = scn.expectations
    assert isinstance(arrives, Arrives)
    assert (arrives.start_ns, arrives.end_ns) == (10**6, 11 * 10**6)
    assert isinstance(counter, CounterCheck) and counter.at_ns == 4 * 10**9
    assert scn.end_ns == 5 * 10**9


@pytest.mark.parametrize("old,new,expected", [
    ("rate: 2k/s", "rate: fast", "good.yaml:9: steps[0].send.rate: 'fast' is not a rate"),
    ("payload: 8", "payload: 8, colour: red", "good.yaml:10: steps[0].send.frame.colour: unknown"),
    ("vlan: 10", "vlan: 4096", "good.yaml:10: steps[0].send.frame.vlan: 4096 is out of range"),
    ("state: down", "state: sideways", "good.yaml:11: steps[1].link.state: expected up or down"),
    ("speed: 10x", "speed: warp", "good.yaml:12: steps[2].replay.speed: 'warp'"),
    ('match: "ether', 'match: "ether nope', "good.yaml:14: expect[0].arrives.match: filter"),
    ("name: drops.link-down", "name: drops.gremlins",
     "good.yaml:15: expect[1].counter.name: unknown drop reason 'gremlins'"),
    ("at: 1ms", "at: soon", "good.yaml:5: steps[0].at: 'soon' is not a duration"),
    ("  - {at: 2s, link", "  - {at: 9s, link", "good.yaml:11: steps[1].at: step at 9s is after"),
    ("  - {at: 2s, link: {port: esx1/vmnic0, state: down}}",
     "  - {at: 2s, move_vm: {vm: a}}", "good.yaml:11: steps[1].move_vm: missing key 'to'"),
    ("duration: 5s", "duration: 5s\nsurprise: 1", "good.yaml:4: surprise: unknown key"),
])
def test_mistakes_name_file_line_and_key(tmp_path: Path, old: str, new: str, expected: str
                                         ) -> None:
    assert old in GOOD
    with pytest.raises(ScenarioError) as err:
        parse_scenario(GOOD.replace(old, new, 1), "good.yaml", base=tmp_path)
    assert expected in str(err.value)


def test_missing_topology_file_and_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"x\.yaml:1: topology: no topology file"):
        parse_scenario("topology: nowhere.yaml\n", "x.yaml", base=tmp_path)
    with pytest.raises(ScenarioError, match=r"x.yaml:\d+: not valid YAML"):
        parse_scenario("steps: [\n", "x.yaml")


@pytest.mark.parametrize("old,new,expected", [
    ("at: b.eth0", "at: z.eth0", "good.yaml:14: expect[0].arrives.at: no 'z.eth0'"),
    ("port: esx1/vmnic0, name", "port: esx9/vmnic0, name",
     "good.yaml:15: expect[1].counter.port: no 'esx9/vmnic0'"),
    ("from: a\n", "from: esx1\n", "good.yaml:7: steps[0].send.from: 'esx1' is a Host"),
    ("port: esx1/vmnic0, state", "port: esx1/vmnic7, state", "steps[1].link.port: no"),
])
def test_names_are_checked_against_the_fabric_before_running(
        tmp_path: Path, old: str, new: str, expected: str) -> None:
    scn = parse_scenario(GOOD.replace(old, new, 1), "good.yaml", base=tmp_path)
    with pytest.raises(ScenarioError) as err:
        scn.check(two_esx(VirtualClock()))
    assert expected in str(err.value)


def test_durations() -> None:
    assert parse_duration("1.5ms") == 1_500_000
    assert parse_duration(2) == 2 * 10**9
    assert parse_duration("250ns") == 250
    assert parse_duration("1h") == 3600 * 10**9
    for bad in ("-1s", "1 fortnight", True, -3):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_named_frames_come_from_python_never_from_the_file(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    syn = Ether(src=MAC_A, dst="00:50:56:00:00:0b") / IP(src="10.0.0.1", dst="10.0.0.2") / TCP()
    text = "steps:\n  - send: {from: a, frame: syn}\n"
    scn = parse_scenario(text, "n.yaml", frames={"syn": syn})
    assert scn.steps[0].frame == bytes(syn)
    with pytest.raises(ScenarioError, match=r"n\.yaml:2: steps\[0\]\.send\.frame: no frame named "
                       r"'syn' \(named frames come from Python"):
        parse_scenario(text, "n.yaml")
    # a Scapy expression in the file is just an unknown name: never evaluated
    with pytest.raises(ScenarioError, match="no frame named"):
        parse_scenario("steps:\n  - send: {from: a, frame: \"Ether()/IP()\"}\n", "n.yaml",
                       frames={"syn": syn})
