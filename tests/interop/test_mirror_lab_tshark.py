"""Mirroring sessions of topologies/esxi-mirror.yaml, run as a lab: RSPAN from esx1 through the
ToR's remote-span VLAN to esx2's analyzer (and nothing else reaches it), ERSPAN type III from
esx1 to the collector VM on esx2, sampled 1 in 2 and cut to 60 bytes; tshark's `erspan`
dissector reads the captured frames with the original frame inside."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from netsim.errors import TopologyError
from netsim.lab.lab import Lab
from netsim.lab.topology import load_topology, validate
from netsim.lab.yamlsrc import SourceMap
from netsim.wire.capture import read_pcapng
from netsim.wire.erspan import decapsulate

pytestmark = pytest.mark.interop
TOPO = Path(__file__).parents[2] / "topologies" / "esxi-mirror.yaml"


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_rspan_reaches_the_analyzer_on_the_other_host_and_nothing_else_does(
        tmp_path: Path) -> None:
    async with Lab(load_topology(TOPO)) as lab:
        mon = lab["esx2/analyzer.eth0"]
        assert (await lab.ping("web", "db")).replied  # web: ARP + echo, both ways
        await lab.settle()  # the copies cross esx1's uplink, the ToR, esx2's uplink
        copies = mon.counters.tx_frames
        session = lab.fabric["esx1/dvs1"].mirror_sessions["web-rspan"]
        assert copies == session.counters.mirrored >= 4
        assert (await lab.ping("app", "analyzer")).replied is False  # no normal I/O
        await lab.settle()
        assert mon.counters.drops["mirror-destination"] >= 1
        # what reached it since are copies too (web's egress includes app's ARP broadcast)
        assert mon.counters.tx_frames == session.counters.mirrored
        learned = lab.fabric["tor"].mac_entries()
        assert learned and all(e.vlan != 999 for e in learned)  # VLAN 10 yes, 999 never


async def test_erspan3_is_sampled_cut_and_dissected_by_tshark(tmp_path: Path) -> None:
    async with Lab(load_topology(TOPO)) as lab:
        (pcap,) = lab.capture("esx2/collector.eth0", tmp_path)
        for _ in range(4):
            assert (await lab.ping("db", "web")).replied
        await lab.settle()
        session = lab.fabric["esx1/dvs1"].mirror_sessions["db-erspan"]
    _, frames = read_pcapng(pcap.read_bytes())
    inner = [decapsulate(f) for _, _, f, _ in frames if f[12:14] == b"\x08\x00" and f[23] == 47]
    assert {d.encapsulation for d in inner} == {"erspan3"}
    c = session.counters
    assert len(inner) == c.mirrored == (c.offered + 1) // 2 and c.sampled_out == c.offered // 2
    assert all(len(d.frame) <= 60 for d in inner) and any(d.truncated for d in inner)
    out = tshark("-r", str(pcap), "-Y", "erspan", "-T", "fields", "-E", "occurrence=l",
                 "-e", "erspan.version", "-e", "erspan.spanid", "-e", "erspan.truncated",
                 "-e", "ip.src", "-e", "vlan.id")
    rows = [r.split("\t") for r in out.splitlines()]
    assert len(rows) == len(inner)
    assert {r[0] for r in rows} == {"2"} and {r[1] for r in rows} == {"42"}
    # the mirrored frames carry their original VLAN (10) inside; 1 in 2 of db's frames in
    # and out (ARP request, ARP reply, echo request, echo reply, ...) are its ARP request
    # (no inner IP: the outer source shows) and its 4 echo requests
    assert {r[4] for r in rows} == {"10"}
    assert sorted(r[3] for r in rows) == ["10.0.0.2"] * 4 + ["10.0.0.250"]


@pytest.mark.parametrize(("path", "value", "msg"), [
    (("web-rspan", "type"), "spanAll", "session type is one of"),
    (("web-rspan", "encapsulation_vlan"), 4095, "VLAN ID 4095 out of range"),
    (("web-rspan", "sampling_rate"), 0, "sampling rate 0 out of range"),
    (("web-rspan", "mirrored_packet_length"), 59, "mirrored packet length 59 out of range"),
    (("web-rspan", "uplinks"), ["vmnic9"], "vmnic9 is not an uplink of switch dvs1"),
    (("web-rspan", "destination"), "db.eth0", "it has no destination"),
    (("db-erspan", "destination"), "10.0.0.300", "expected an IPv4 address"),
    (("db-erspan", "encapsulation"), "vxlan", "encapsulation is one of gre, erspan2, erspan3"),
    (("db-erspan", "erspan_id"), 1024, "ERSPAN session ID 1024 out of range"),
])
def test_bad_session_settings_name_the_line(path: tuple[str, str], value: object,
                                            msg: str) -> None:
    import yaml

    doc = yaml.safe_load(TOPO.read_text())
    doc["hosts"]["esx1"]["mirrors"][path[0]][path[1]] = value
    with pytest.raises(TopologyError, match=msg):
        validate(doc, SourceMap("t.yaml"))


def test_erspan_collector_that_is_no_vm_is_refused() -> None:
    import yaml

    doc = yaml.safe_load(TOPO.read_text())
    doc["hosts"]["esx1"]["mirrors"]["db-erspan"]["destination"] = "10.9.9.9"
    with pytest.raises(TopologyError, match=r"no vNIC in the lab has IP 10\.9\.9\.9"):
        Lab(validate(doc, SourceMap("t.yaml")))
