"""pcap and pcapng captures read back exactly; cut or foreign files say what is wrong."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import dpkt
import pytest
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter, wrpcap

from netsim.errors import CaptureError
from netsim.wire.pcapread import read_capture

FRAMES = [bytes(Ether(src="00:16:3e:00:00:01", dst="ff:ff:ff:ff:ff:ff") / (b"x" * n))
          for n in (46, 100, 1486)]


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _opt(code: int, val: bytes) -> bytes:
    return struct.pack("<HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def write_pcapng_ns(path: Path, records: list[tuple[int, bytes, int]], names: list[str]) -> None:
    """A pcapng with one IDB per name, if_tsresol=9 (ns)."""
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for name in names:
        opts = _opt(2, name.encode()) + _opt(9, b"\x09") + _opt(0, b"")
        out += _block(1, struct.pack("<HHI", 1, 0, 0) + opts)
    for ts, frame, ifid in records:
        out += _block(6, struct.pack("<IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(frame),
                                     len(frame)) + frame)
    path.write_bytes(out)


def test_pcap_microseconds_from_scapy(tmp_path: Path) -> None:
    pkts = [Ether(f) for f in FRAMES]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i * 0.25
    wrpcap(str(tmp_path / "a.pcap"), pkts)
    got = list(read_capture(tmp_path / "a.pcap"))
    assert [f for _, f, _ in got] == FRAMES
    assert [t for t, _, _ in got] == [1_700_000_000 * 10**9 + i * 250_000_000 for i in range(3)]
    assert {i for _, _, i in got} == {None}


def test_pcap_nanoseconds_keep_every_digit(tmp_path: Path) -> None:
    path = tmp_path / "ns.pcap"
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, nano=True)
        w.writepkt(FRAMES[0], ts=1.000000123)
    [(ts, frame, _)] = list(read_capture(path))
    assert ts == 1_000_000_123 and frame == FRAMES[0]


def test_big_endian_pcap(tmp_path: Path) -> None:
    path = tmp_path / "be.pcap"
    f = FRAMES[1]
    path.write_bytes(struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                     + struct.pack(">IIII", 7, 5, len(f), len(f)) + f)
    assert list(read_capture(path)) == [(7 * 10**9 + 5000, f, None)]


def test_pcapng_names_each_frame_with_its_interface(tmp_path: Path) -> None:
    path = tmp_path / "multi.pcapng"
    records = [(1_767_225_600_000_000_001, FRAMES[0], 0), (1_767_225_600_000_000_002, FRAMES[1], 1),
               (1_767_225_600_000_000_003, FRAMES[2], 0)]
    write_pcapng_ns(path, records, ["vif1.0", "xen1/eth0"])
    got = list(read_capture(path))
    assert got == [(ts, fr, ["vif1.0", "xen1/eth0"][i]) for ts, fr, i in records]
    # tshark agrees on names and count: the file we read is the file Wireshark reads
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["vif1.0", "xen1/eth0", "vif1.0"]


def test_pcapng_from_scapy_and_editcap(tmp_path: Path) -> None:
    w = PcapNgWriter(str(tmp_path / "s.pcapng"))
    for i, f in enumerate(FRAMES):
        pkt = Ether(f)
        pkt.time = 100 + i + 7e-6
        pkt.sniffed_on = ["p1", "p2"][i % 2]
        w.write(pkt)
    w.close()
    got = list(read_capture(tmp_path / "s.pcapng"))
    assert [(t, f, i) for t, f, i in got] == [
        ((100 + i) * 10**9 + 7000, f, ["p1", "p2"][i % 2]) for i, f in enumerate(FRAMES)]
    wrpcap(str(tmp_path / "b.pcap"), [Ether(f) for f in FRAMES])
    subprocess.run(["editcap", "-F", "pcapng", str(tmp_path / "b.pcap"),
                    str(tmp_path / "b.pcapng")], check=True)
    assert [f for _, f, _ in read_capture(tmp_path / "b.pcapng")] == FRAMES


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("cut", [1, 10, 30])
def test_truncated_file_yields_what_is_whole_then_says_truncated(
        tmp_path: Path, fmt: str, cut: int) -> None:
    path = tmp_path / f"t.{fmt}"
    if fmt == "pcap":
        wrpcap(str(path), [Ether(f) for f in FRAMES])
    else:
        write_pcapng_ns(path, [(i, f, 0) for i, f in enumerate(FRAMES)], ["eth0"])
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    got: list[bytes] = []
    with pytest.raises(CaptureError, match="truncated") as err:
        for _, frame, _ in read_capture(path):
            got.append(frame)
    assert got == FRAMES[:2]
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content,message", [
    (b"hello, this is a text file\n", "not a pcap or pcapng"),
    (b"", "empty file"),
    (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap header"),
])
def test_not_a_capture(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=message):
        list(read_capture(path))


def test_missing_file_and_foreign_link_type(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot read"):
        list(read_capture(tmp_path / "nope.pcap"))
    path = tmp_path / "raw.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    with pytest.raises(CaptureError, match="not Ethernet"):
        list(read_capture(path))
