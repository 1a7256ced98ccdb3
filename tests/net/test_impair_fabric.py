"""Impaired links in a running fabric: YAML, captures, counters, the clock, the CLI."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netsim.dataplane.impair import Impairment, RandomLoss
from netsim.dataplane.vclock import VirtualClock
from netsim.errors import ScenarioError, TopologyError
from netsim.lab.lab import Lab, build_fabric
from netsim.lab.topology import parse_topology
from netsim.scenario.model import parse_scenario
from netsim.scenario.runner import run_scenario
from netsim.wire.capture import read_pcapng
from netsim.wire.framespec import build_frame

ROOT = Path(__file__).resolve().parents[2]
MS = 1_000_000

TOPO = """\
name: imp
seed: {seed}
hosts:
  esx1:
    type: esxi
    pifs: {{vmnic0: {{}}}}
    switches: {{vSwitch0: {{uplinks: [vmnic0]}}}}
    port_groups: {{Web: {{vlan: 10}}}}
    vms:
      a: {{nics: [{{network: Web, mac: "00:50:56:00:00:0a", ip: 10.0.0.1/24{vnic}}}]}}
  esx2:
    type: esxi
    pifs: {{vmnic0: {{}}}}
    switches: {{vSwitch0: {{uplinks: [vmnic0]}}}}
    port_groups: {{Web: {{vlan: 10}}}}
    vms:
      b: {{nics: [{{network: Web, mac: "00:50:56:00:00:0b", ip: 10.0.0.2/24}}]}}
physical:
  core:
    ports:
      esx1.vmnic0: {{mode: trunk, vlans: [10]{port}}}
      esx2.vmnic0: {{mode: trunk, vlans: [10]}}
{links}"""


def topo_text(*, port: str = "", vnic: str = "", links: str = "", seed: int = 1) -> str:
    return TOPO.format(port=f", impair: {port}" if port else "",
                       vnic=f", impair: {vnic}" if vnic else "", links=links, seed=seed)


def udp(sport: int = 1) -> bytes:
    return build_frame({"eth": {"src": "00:50:56:00:00:0a", "dst": "00:50:56:00:00:0b"},
                        "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2"},
                        "udp": {"sport": sport, "dport": 9}})


def learn_b() -> bytes:
    return build_frame({"eth": {"src": "00:50:56:00:00:0b", "dst": "00:50:56:00:00:0a"}})


# ------------------------------------------------------------------------------------- YAML
def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


@pytest.mark.parametrize(("impair", "key", "message"), [
    ("{delay: -1ms}", "delay", "cannot be negative"),
    ("{loss: 150%}", "loss", "between 0% and 100%"),
    ("{delay: 10ms, jitter: 1ms, distribution: gaussian}", "distribution",
     "unknown distribution 'gaussian'"),
    ("{rate: fast}", "rate", "rate must be like 100Mbit"),
    ("{delay: 20}", "delay", "give delay a unit"),
    ("{loss: {gilbert: {p: 1%, r: 101%}}}", "loss.gilbert.r", "between 0% and 100%"),
    ("{loss: {state: {p13: 60%, p14: 50%}}}", "loss.state", "p13 + p14"),
    ("{reorder: 25%}", "reorder", "needs a delay"),
    ("{colour: red}", "colour", "unknown key"),
])
def test_bad_values_refused_with_file_line_key(impair: str, key: str, message: str) -> None:
    with pytest.raises(TopologyError) as ei:
        parse_topology(topo_text(port=impair), "lab.yaml")
    msg = str(ei.value)
    line = _line_of(topo_text(port=impair), "esx1.vmnic0: {mode")
    where = rf"lab\.yaml:{line}: physical\.core\.ports\.esx1\.vmnic0\.impair\.{key}: "
    assert re.match(where, msg), msg
    assert message in msg


def test_links_name_the_two_ends_of_one_cable() -> None:
    bad = "links:\n  - {between: [core/esx1.vmnic0, esx2/vmnic0], a_to_b: {delay: 1ms}}\n"
    line = _line_of(topo_text(links=bad), "between")
    with pytest.raises(TopologyError, match=rf"lab\.yaml:{line}: links\[0\]\.between: .*not the "
                       r"two ends of one cable"):
        parse_topology(topo_text(links=bad), "lab.yaml")
    twice = ("links:\n  - {between: [core/esx1.vmnic0, esx1/vmnic0], a_to_b: {delay: 1ms}}\n"
             "  - {between: [esx1/vmnic0, core/esx1.vmnic0], b_to_a: {delay: 2ms}}\n")
    with pytest.raises(TopologyError, match=r"links\[1\]\.b_to_a: the cable direction from "
                       r"core/esx1\.vmnic0 is already impaired at lab\.yaml:\d+: links\[0\]"):
        parse_topology(topo_text(links=twice), "lab.yaml")


def test_cli_refuses_bad_topology_with_one_line_and_status_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(topo_text(port="{loss: 150%}"))
    p = subprocess.run([sys.executable, "-m", "netsim", "ping", str(f), "a", "b"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    line = _line_of(f.read_text(), "esx1.vmnic0: {mode")
    assert len(lines) == 1 and f"bad.yaml:{line}:" in lines[0] and "Traceback" not in p.stderr


def test_scenario_step_refuses_bad_values() -> None:
    text = ("name: s\nsteps:\n  - {at: 1s, impair: {port: x, delay: 10ms, loss: 150%}}\n")
    with pytest.raises(ScenarioError, match=r"s\.yaml:3: steps\[0\]\.impair\.loss: .*100%"):
        parse_scenario(text, "s.yaml")
    with pytest.raises(ScenarioError, match="a cable step impairs what the port sends"):
        parse_scenario("name: s\nsteps:\n  - {impair: {cable: x, direction: in, delay: 1ms}}\n",
                       "s.yaml")
    with pytest.raises(ScenarioError, match="clear takes no settings"):
        parse_scenario("name: s\nsteps:\n  - {impair: {port: x, clear: true, delay: 1ms}}\n",
                       "s.yaml")


# -------------------------------------------------------------------- captures and counters
def tagged(f: bytes, vid: int = 10) -> bytes:
    return f[:12] + bytes((0x81, 0, vid >> 8, vid & 0xFF)) + f[12:]


async def test_sender_capture_at_t_receiver_at_t_plus_delay_lost_only_at_sender(
        tmp_path: Path) -> None:
    clock = VirtualClock()
    lab = Lab(parse_topology(topo_text(port="{delay: 20ms, loss: 25%}"), "lab.yaml"),
              clock=clock)
    fab = lab.fabric
    # sender: esx1's PIF (frames leave it at t); receiver: core's port (they arrive at t+20ms)
    (tx_path,) = fab.capture(["esx1/vmnic0"], tmp_path / "tx")
    (rx_path,) = fab.capture(["core/esx1.vmnic0"], tmp_path / "rx")
    a, b = fab["a"].vnic, fab["b"].vnic
    n = 400
    async with lab:
        b.send(learn_b())
        await clock.sleep(0.1)
        t0 = clock.now_ns()
        for i in range(n):
            await clock.sleep_until(t0 + i * 3 * MS)
            a.send(udp(1000 + i))
        await clock.sleep(1)
    _, tx = read_pcapng(tx_path)
    _, rx = read_pcapng(rx_path)
    sent = {tagged(udp(1000 + i)) for i in range(n)}
    tx_udp = {fr: ts for _, ts, fr, _ in tx if fr in sent}
    rx_udp = {fr: ts for _, ts, fr, _ in rx if fr in sent}
    lost = fab["core/esx1.vmnic0"].counters.drops["impair-loss"]
    assert len(tx_udp) == n
    assert len(rx_udp) == n - lost and 0 < lost < n
    assert all(ts - tx_udp[fr] == 20 * MS for fr, ts in rx_udp.items())
    assert sorted(tx_udp.values())[0] == t0


async def test_same_seed_byte_identical_pcaps_and_report(tmp_path: Path) -> None:
    scn_text = (
        "name: det\ntopology: lab.yaml\ncapture: [esx1/vmnic0, esx2/vmnic0]\nsteps:\n"
        "  - {at: 1ms, send: {from: b, frame: {eth: {src: '00:50:56:00:00:0b', "
        "dst: '00:50:56:00:00:0a'}}}}\n"
        "  - {at: 10ms, send: {from: a, count: 300, interval: 1ms, frame: {eth: {src: "
        "'00:50:56:00:00:0a', dst: '00:50:56:00:00:0b'}, ipv4: {src: 10.0.0.1, dst: 10.0.0.2},"
        " udp: {dport: 9}}}}\n"
        "  - {at: 150ms, impair: {link: core/esx1.vmnic0, delay: 5ms, duplicate: 5%}}\n"
        "expect:\n  - arrives: {at: b, match: 'udp dst port 9', min: 1}\n")
    impair = ("{delay: 10ms, jitter: 4ms, distribution: pareto, loss: {gilbert: {p: 5%, r: 40%}},"
              " corrupt: 2%, reorder: 10%}")
    outs = []
    for run, seed in enumerate((5, 5, 6)):
        d = tmp_path / f"seed{seed}"
        d.mkdir(exist_ok=True)
        (d / "lab.yaml").write_text(topo_text(port=impair, seed=seed))
        out = d / f"out{run}"
        report = await run_scenario(parse_scenario(scn_text, "det.yaml", base=d), out_dir=out)
        assert report.passed
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1]
    rx = next(n for n in outs[0] if n.startswith("esx2") and n.endswith(".pcapng"))
    assert outs[0][rx] != outs[2][rx]
    report = outs[0]["report.json"].decode()
    for reason in ("impair-loss", "corrupt"):
        assert f'"{reason}"' in report
    directions = json.loads(report)["impairments"]
    st = directions["core/esx1.vmnic0:in"]
    assert st["settings"] == "delay 5ms duplicate 5%"  # after the step changed it
    assert st["offered"] + st["duplicated"] == (st["delivered"] + st["lost"]
                                                 + st["queue_dropped"] + st["held"])


async def test_corrupted_frames_counted_by_the_receiver() -> None:
    clock = VirtualClock()
    lab = Lab(parse_topology(topo_text(), "lab.yaml"), clock=clock)
    fab = lab.fabric
    fab.seed = 3
    fab.impair("esx1/vmnic0", Impairment(corrupt=0.2), direction="out")
    a, b = fab["a"].vnic, fab["b"].vnic
    async with lab:
        b.send(learn_b())
        await clock.sleep(0.01)
        for i in range(1000):
            a.send(udp(i))
            await clock.sleep(0.001)
        await clock.sleep(0.1)
    path = fab.impairments[("esx1/vmnic0", "out")]
    bad = path.stats.corrupted
    assert 100 < bad < 300
    assert fab["core/esx1.vmnic0"].counters.drops["corrupt"] == bad  # the receiving end
    assert fab["esx1/vmnic0"].counters.tx_frames >= 1000


async def test_vnic_gilbert_loss_and_queue_limit_counted_on_the_port() -> None:
    clock = VirtualClock()
    vnic = "{loss: {gilbert: {p: 10%, r: 30%, h: 0%, k: 100%}}, delay: 1s, limit: 50}"
    lab = Lab(parse_topology(topo_text(vnic=vnic), "lab.yaml"), clock=clock)
    fab = lab.fabric
    a = fab["a"].vnic
    async with lab:
        for i in range(500):  # a burst: 50 fit in the delay line, the rest are tail-dropped
            a.send(udp(i))
        await clock.sleep(2)
    drops = fab["esx1/a.eth0"].counters.drops
    path = fab.impairments[("esx1/a.eth0", "in")]
    assert drops["impair-loss"] == path.stats.lost > 0
    assert drops["impair-queue"] == path.stats.queue_dropped
    assert path.stats.lost + path.stats.queue_dropped + 50 == 500


async def test_a_virtual_hour_of_delay_is_one_jump_and_no_wall_time() -> None:
    clock = VirtualClock()
    fab = build_fabric(parse_topology(topo_text(), "lab.yaml"), clock=clock)
    fab.impair("core/esx1.vmnic0", Impairment(delay_ns=3600 * 10**9), direction="in")
    got: list[int] = []
    fab.on_receive("b", lambda f: got.append(clock.now_ns()))
    fab.on_receive("a", lambda f: None)
    async with fab:
        fab["b"].vnic.send(learn_b())
        await clock.sleep(0.001)
        t0 = clock.now_ns()
        jumps = clock.jumps
        wall = time.perf_counter()
        fab["a"].vnic.send(udp())
        await clock.sleep(3601)
        wall = time.perf_counter() - wall
    assert got == [t0 + 3600 * 10**9]
    # the delivery, the end of the sleep, and the MAC tables' aging sweeps (every 75 s)
    assert clock.jumps - jumps <= 3 + 3601 // 75
    assert wall < 1.0


async def test_changing_and_clearing_keep_frames_in_flight() -> None:
    clock = VirtualClock()
    fab = build_fabric(parse_topology(topo_text(), "lab.yaml"), clock=clock)
    got: list[tuple[int, bytes]] = []
    fab.on_receive("b", lambda f: got.append((clock.now_ns(), f)))
    fab.on_receive("a", lambda f: None)
    a = fab["a"].vnic
    async with fab:
        fab["b"].vnic.send(learn_b())
        await clock.sleep(0.001)
        t0 = clock.now_ns()
        fab.impair("esx1/vmnic0", Impairment(delay_ns=100 * MS), direction="out")
        a.send(udp(1))
        await clock.sleep(0.010)
        fab.impair("esx1/vmnic0", Impairment(delay_ns=10 * MS), direction="out")  # change
        a.send(udp(2))
        await clock.sleep(0.010)
        fab.impair("esx1/vmnic0", None)  # clear: what follows queues behind what is in flight
        a.send(udp(3))
        await clock.sleep(0.2)
        a.send(udp(4))
        await clock.sleep(0.01)
        assert fab["esx1/vmnic0"].impair_out is None and fab["esx1/vmnic0"].tx_plain
    times = [t - t0 for t, _ in got]
    assert [f for _, f in got] == [udp(1), udp(2), udp(3), udp(4)]  # FIFO kept
    assert times[:3] == [100 * MS, 100 * MS, 100 * MS] and times[3] == 220 * MS


def test_hvsim_ping_rtt_is_two_delays_plus_jitter(tmp_path: Path) -> None:
    f = tmp_path / "lab.yaml"
    f.write_text(topo_text(port="{delay: 10ms, jitter: 2ms}"))
    p = subprocess.run([sys.executable, "-m", "netsim", "ping", str(f), "a", "b", "-c", "6"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", p.stdout)]
    assert len(rtts) == 6
    # the first waits for ARP: four crossings; then two, each 10 ms +- 2 ms (uniform)
    assert 32.0 <= rtts[0] <= 48.0
    assert all(16.0 <= r <= 24.0 for r in rtts[1:]), rtts
    assert len(set(rtts[1:])) > 1  # jitter, not a constant


def test_hvsim_run_shows_impairment_drops(tmp_path: Path) -> None:
    f = tmp_path / "lab.yaml"
    f.write_text(topo_text(port="{loss: 100%}"))
    p = subprocess.run([sys.executable, "-m", "netsim", "run", str(f), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert "impair-loss" in p.stdout, p.stdout + p.stderr


async def test_lost_frames_never_reach_the_far_side() -> None:
    clock = VirtualClock()
    fab = build_fabric(parse_topology(topo_text(), "lab.yaml"), clock=clock)
    fab.impair("esx1/vmnic0", Impairment(loss=RandomLoss(1.0)), direction="out")
    got: list[bytes] = []
    fab.on_receive("b", got.append)
    async with fab:
        for i in range(10):
            fab["a"].vnic.send(udp(i))
        await clock.sleep(0.01)
    assert got == [] and fab["esx1/vmnic0"].counters.drops["impair-loss"] == 10


async def test_real_time_run_releases_frames_never_early(tmp_path: Path) -> None:
    (tmp_path / "lab.yaml").write_text(topo_text(port="{delay: 20ms, jitter: 5ms}"))
    text = ("name: rt\ntopology: lab.yaml\nduration: 300ms\nsteps:\n"
            "  - {at: 1ms, send: {from: b, frame: {eth: {src: '00:50:56:00:00:0b', "
            "dst: '00:50:56:00:00:0a'}}}}\n"
            "  - {at: 10ms, send: {from: a, count: 50, interval: 2ms, frame: {eth: {src: "
            "'00:50:56:00:00:0a', dst: '00:50:56:00:00:0b'}, ipv4: {src: 10.0.0.1, "
            "dst: 10.0.0.2}, udp: {dport: 9}}}}\n"
            "expect:\n"
            "  - arrives: {at: b, match: 'udp dst port 9', within: 25ms, count: 0}\n"
            "  - arrives: {at: b, match: 'udp dst port 9', count: 50}\n")
    report = await run_scenario(parse_scenario(text, "rt.yaml", base=tmp_path), realtime=True)
    # nothing can arrive before 10 ms + 20 ms - 5 ms, however the wall clock goes
    assert report.passed, report.to_json()


def test_distributed_run_refuses_impairment_it_would_not_apply(tmp_path: Path) -> None:
    f = tmp_path / "lab.yaml"
    f.write_text(topo_text(port="{delay: 5ms}"))
    p = subprocess.run([sys.executable, "-m", "netsim", "run", str(f), "--out",
                        str(tmp_path / "out"), "--broker", "mqtt://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2
    assert "not applied with --broker" in p.stderr and "Traceback" not in p.stderr


async def test_port_and_cable_impairments_add_up_in_order() -> None:
    # the example: core/esx1.vmnic0 has its own impairment and its cable one more
    cable = ("links:\n  - {between: [core/esx1.vmnic0, esx1/vmnic0], a_to_b: {delay: 2ms}, "
             "b_to_a: {delay: 3ms}}\n")
    topo = parse_topology(topo_text(port="{delay: 5ms}", links=cable), "lab.yaml")
    assert sorted((i.port, i.direction, i.layer) for i in topo.impairments) == [
        ("core/esx1.vmnic0", "in", "port"), ("core/esx1.vmnic0", "out", "cable"),
        ("core/esx1.vmnic0", "out", "port"), ("esx1/vmnic0", "out", "cable")]
    clock = VirtualClock()
    fab = build_fabric(topo, clock=clock)
    at_a: list[int] = []
    at_b: list[int] = []
    fab.on_receive("a", lambda f: at_a.append(clock.now_ns()))
    fab.on_receive("b", lambda f: at_b.append(clock.now_ns()))
    async with fab:
        t0 = clock.now_ns()
        fab["b"].vnic.send(learn_b())  # b -> a: core's port out (5 ms), then its cable (2 ms)
        await clock.sleep(0.1)
        t1 = clock.now_ns()
        fab["a"].vnic.send(udp())  # a -> b: esx1's cable (3 ms), then core's port in (5 ms)
        await clock.sleep(0.1)
        fab.impair_cable("core/esx1.vmnic0", None)  # a scenario's {cable: ..., clear: true}
        t2 = clock.now_ns()
        fab["b"].vnic.send(learn_b())
        await clock.sleep(0.1)
    assert at_a == [t0 + 7 * MS, t2 + 5 * MS]
    assert at_b == [t1 + 8 * MS]
    assert set(fab.impairments) == {("core/esx1.vmnic0", "out"), ("core/esx1.vmnic0", "in"),
                                    ("core/esx1.vmnic0", "cable"), ("esx1/vmnic0", "cable")}
    assert fab.impairments[("esx1/vmnic0", "cable")].name == "esx1/vmnic0->core/esx1.vmnic0"


async def test_rate_serializes_a_burst_and_tail_drops_beyond_the_limit() -> None:
    cable = ("links:\n  - {between: [esx1/vmnic0, core/esx1.vmnic0], "
             "a_to_b: {rate: 10Mbit, limit: 100}}\n")
    clock = VirtualClock()
    fab = build_fabric(parse_topology(topo_text(links=cable), "lab.yaml"), clock=clock)
    got: list[int] = []
    fab.on_receive("b", lambda f: got.append(clock.now_ns()))
    fab.on_receive("a", lambda f: None)
    frame = build_frame({"eth": {"src": "00:50:56:00:00:0a", "dst": "00:50:56:00:00:0b"},
                         "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2"},
                         "udp": {"dport": 9}, "payload": 1000})
    tagged_len = len(frame) + 4  # what crosses the trunk cable
    async with fab:
        fab["b"].vnic.send(learn_b())
        await clock.sleep(0.01)
        t0 = clock.now_ns()
        fab["a"].vnic.send_many([frame] * 300)  # one burst, far over the link's rate
        await clock.sleep(1)
    per_frame = tagged_len * 8 * 1_000_000_000 // 10_000_000  # netem packet_time_ns
    assert len(got) == 100
    assert got == [t0 + (i + 1) * per_frame for i in range(100)]  # backlog / rate
    assert fab["esx1/vmnic0"].counters.drops["impair-queue"] == 200
