"""Encapsulated remote mirroring as a vDS sends it: Wireshark's `gre` and `erspan` dissectors
read our GRE / ERSPAN II / ERSPAN III frames, with the mirrored frame (tag, addresses) inside."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.errors import FrameError
from netsim.wire.capture import PcapngWriter
from netsim.wire.erspan import ErspanTunnel, decapsulate, ipv4_header
from netsim.wire.frame import ethernet, push_tag

pytestmark = pytest.mark.interop
SRC, DST = bytes.fromhex("005056000001"), bytes.fromhex("005056000002")
ORIG = push_tag(ethernet(DST, SRC, 0x0800, bytes(range(46)) * 2), 100, pcp=5)


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def tunnel(enc: str, **kw: object) -> ErspanTunnel:
    return ErspanTunnel(enc, bytes.fromhex("005056aa0001"), bytes.fromhex("005056aa0002"),
                        bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), **kw)  # type: ignore[arg-type]


def write(path: Path, frames: list[bytes]) -> Path:
    w = PcapngWriter(path, clock=ManualClock())
    tap = w.tap(w.add_interface("vmnic0"))
    for f in frames:
        tap(f, True)
    w.close()
    return path


@pytest.mark.parametrize(("enc", "version"), [("erspan2", "1"), ("erspan3", "2")])
@pytest.mark.parametrize("cut", [None, 64])
def test_tshark_dissects_erspan_with_the_original_frame_inside(
        tmp_path: Path, enc: str, version: str, cut: int | None) -> None:
    t = tunnel(enc, session_id=300, vlan=20)
    inner = ORIG[:cut] if cut else ORIG
    frames = [t.encapsulate(inner, seq=i, truncated=cut is not None) for i in range(3)]
    out = tshark("-r", str(write(tmp_path / "e.pcapng", frames)), "-Y", "erspan",
                 "-T", "fields", "-E", "occurrence=l", "-e", "erspan.version",
                 "-e", "erspan.spanid", "-e", "erspan.truncated", "-e", "gre.sequence_number",
                 "-e", "vlan.id", "-e", "eth.src", "-e", "vlan.priority", "-e", "ip.proto")
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 3, out
    for i, r in enumerate(rows):
        # last occurrence of vlan/eth/ip fields: those of the mirrored frame inside
        assert r[:4] == [version, "300", "1" if cut else "0", str(i)], r
        assert r[4:7] == ["100", "00:50:56:00:00:01", "5"], r


def test_tshark_reads_plain_gre_mirroring_as_ethernet_bridging(tmp_path: Path) -> None:
    out = tshark("-r", str(write(tmp_path / "g.pcapng", [tunnel("gre").encapsulate(ORIG)])),
                 "-T", "fields", "-e", "frame.protocols", "-e", "gre.proto",
                 "-E", "occurrence=f").strip()
    protocols, proto = out.split("\t")
    assert protocols.startswith("eth:ethertype:ip:gre:eth:ethertype:vlan"), protocols
    assert proto == "0x6558"


@pytest.mark.parametrize("enc", ["gre", "erspan2", "erspan3"])
def test_decapsulate_round_trips_and_refuses_cut_frames(enc: str) -> None:
    outer = tunnel(enc, session_id=5).encapsulate(ORIG, seq=9)
    # the IPv4 header (checksum computed incrementally) is the one built from scratch
    assert outer[14:34] == ipv4_header(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 47,
                                       len(outer) - 34, ident=9)
    d = decapsulate(outer)
    assert d.frame == ORIG and d.encapsulation == enc
    for n in (13, 30, 40, 45):
        with pytest.raises(FrameError, match="offset"):
            decapsulate(outer[:n])


@pytest.mark.parametrize(("kw", "msg"), [({"session_id": 1024}, "session ID"),
                                        ({"cos": 8}, "COS"), ({"vlan": 4095}, "VLAN")])
def test_tunnel_settings_out_of_range_are_refused(kw: dict, msg: str) -> None:
    with pytest.raises(FrameError, match=msg):
        tunnel("erspan2", **kw)
