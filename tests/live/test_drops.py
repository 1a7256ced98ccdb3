"""--capture-drops: every frame a switch or port drops lands in drops.pcapng, on the interface of
the port where it died, with the reason in the packet comment (what Wireshark shows as
frame.comment); tshark reads it."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netsim.clock import ManualClock
from netsim.dataplane.policy import SecurityPolicy
from netsim.dataplane.port import Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.lab import demo
from netsim.lab.fabric import Fabric
from netsim.live.drops import DropCapture
from netsim.wire import frame as fr

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def comments(path: Path) -> list[tuple[str, str]]:
    out = tshark("-r", str(path), "-T", "fields", "-e", "frame.interface_name",
                 "-e", "frame.comment")
    return [tuple(line.split("\t")) for line in out.splitlines() if line]  # type: ignore[misc]


@pytest.mark.interop
def test_demo_drops_carry_their_reason_in_tshark(tmp_path: Path) -> None:
    caps: list[DropCapture] = []

    def attach(fab: Fabric) -> DropCapture:
        caps.append(DropCapture(fab, tmp_path / "drops.pcapng").start())
        return caps[-1]

    result = asyncio.run(demo.run(tmp_path, start_ns=10**18, attach=attach))
    expected = Counter()
    for s in result.steps:
        for port, reasons in s.drops.items():
            for reason, n in reasons.items():
                expected[(port, f"dropped at {port}: {reason}")] += n
    assert expected, "the demo drops frames (cross-VLAN, VLAN hopping)"
    got = Counter(comments(tmp_path / "drops.pcapng"))
    assert got == expected
    assert ("vif1.0", "dropped at vif1.0: tagged-on-access") in got
    # the frame recorded is the one that died: vm1's own tag 65 is still on it
    vids = tshark("-r", str(tmp_path / "drops.pcapng"), "-Y", "frame.comment contains "
                  "\"tagged-on-access\"", "-T", "fields", "-e", "vlan.id").split()
    assert vids == ["65"]


def _vss(clock: ManualClock) -> tuple[Fabric, Vif, Vif, Vif]:
    fab = Fabric(clock=clock)
    host = fab.add_host("esx1")
    sw = host.add_switch("vSwitch0")
    assert isinstance(sw, StandardSwitch)
    sw.add_port_group(PortGroup("lab", vlan=0, security=SecurityPolicy()))
    vm = host.add_vm("a")
    a = vm.add_vif(sw, "lab", mac="00:16:3e:00:00:0a")
    b = host.add_vm("b").add_vif(sw, "lab", mac="00:16:3e:00:00:0b")
    c = host.add_vm("c").add_vif(sw, "lab", mac="00:16:3e:00:00:0c")
    return fab, a, b, c


def test_every_counted_drop_is_one_record_and_hooks_come_off(tmp_path: Path) -> None:
    clock = ManualClock(start_ns=1_000)
    fab, a, _b, c = _vss(clock)
    cap = DropCapture(fab, tmp_path / "d.pcapng").start()
    stray = fr.ethernet(fr.mac_to_bytes("00:16:3e:99:99:99"), a.mac, 0x0800, bytes(46))
    tagged = fr.push_tag(stray, 7)
    runt = b"\x01" * 10
    a.vnic.send(stray)  # flooded: b and c drop it (not-promiscuous)
    a.vnic.send_many([stray, stray, tagged, runt])  # batched ingress is recorded too
    c.set_link(False)
    a.vnic.send(stray)  # c's link is down: c counts link-down, b not-promiscuous
    cap.close()
    counted = sum(sum(p.counters.drops.values()) for p in fab.ports())
    assert cap.records == counted and cap.unrecorded == 0
    names = {port for port, _ in comments(tmp_path / "d.pcapng")}
    assert {"vif1.0", "vif2.0", "vif3.0"} & names
    for p in fab.ports():
        assert p.counters.on_drop is None
    sw = fab["esx1/vSwitch0"]
    assert "ingress" not in sw.__dict__ and "ingress_batch" not in sw.__dict__
    before = cap.records
    a.vnic.send(stray)
    assert cap.records == before  # nothing recorded after close


def test_switching_is_unchanged_while_recording(tmp_path: Path) -> None:
    """The same frames give the same deliveries and counters with and without the recorder."""
    def run(record: bool) -> tuple[dict, list[list[bytes]]]:
        clock = ManualClock(start_ns=1_000)
        fab, a, b, c = _vss(clock)
        cap = DropCapture(fab, tmp_path / f"{record}.pcapng").start() if record else None
        frames = [fr.ethernet(fr.mac_to_bytes(d), a.mac, 0x0800, bytes(46)) for d in
                  ("00:16:3e:00:00:0b", "00:16:3e:00:00:0c", "ff:ff:ff:ff:ff:ff",
                   "00:16:3e:12:34:56")]
        b.vnic.send(fr.ethernet(a.mac, b.mac, 0x0800, bytes(46)))
        a.vnic.send_many(frames * 3)
        if cap:
            cap.close()
        return fab.counters(), [p.vnic.drain() for p in (a, b, c)]

    assert run(True) == run(False)


def test_cli_run_and_replay_write_drops(tmp_path: Path) -> None:
    from netsim.cli.app import load_commands

    app = load_commands()
    r = CliRunner().invoke(app, ["replay", str(TOPOLOGIES / "scenarios" / "promiscuous.yaml"),
                                 "--out", str(tmp_path / "rep"), "--capture-drops"])
    assert r.exit_code == 0, r.output
    got = Counter(c for _, c in comments(tmp_path / "rep" / "drops.pcapng"))
    assert got["dropped at b.eth0: not-promiscuous"] == 2  # sent twice under Reject
    assert got["dropped at c.eth0: not-promiscuous"] == 2
    assert "drops.pcapng" in r.output

    r = CliRunner().invoke(app, ["run", str(TOPOLOGIES / "xen-vlans.yaml"), "--out",
                                 str(tmp_path / "run"), "--capture", "eth0",
                                 "--capture-drops", "--duration", "0.1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "drops.pcapng").exists()
    assert "dropped frame(s)" in r.output


def test_unwritable_drop_file_is_one_clear_error(tmp_path: Path) -> None:
    from netsim.errors import CaptureError

    fab, *_ = _vss(ManualClock())
    with pytest.raises(CaptureError, match="cannot write drop capture"):
        DropCapture(fab, tmp_path / "missing" / "d.pcapng")

