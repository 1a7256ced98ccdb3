"""Captures from other tools: pcapng corner cases read as tshark/libpcap read them, gzip
transparently, non-Ethernet interfaces skipped and counted, cooked and raw IP made Ethernet."""
from __future__ import annotations

import gzip
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from netsim.errors import CaptureError
from netsim.wire.pcapread import CaptureStats, EthernetRewrite, read_capture

FRAME = bytes(Ether(src="00:16:3e:00:00:01", dst="ff:ff:ff:ff:ff:ff") / (b"x" * 50))
IPPKT = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=53) / b"hello")
SRC, DST = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _opt(code: int, val: bytes) -> bytes:
    return struct.pack("<HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def _shb(major: int = 1, minor: int = 0) -> bytes:
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, major, minor, -1))


def _idb(linktype: int = 1, snaplen: int = 0, name: str | None = None,
         opts: bytes | None = None) -> bytes:
    if opts is None:
        opts = (_opt(2, name.encode()) + _opt(0, b"")) if name else b""
    return _block(1, struct.pack("<HHI", linktype, 0, snaplen) + opts)


def _epb(ifid: int, frame: bytes, ticks: int = 1) -> bytes:
    return _block(6, struct.pack("<IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(frame),
                                 len(frame)) + frame)


def _pcap(linktype: int, packets: list[bytes], major: int = 2, minor: int = 4,
          usec: int = 5) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, major, minor, 0, 0, 65535, linktype)
    for p in packets:
        out += struct.pack("<IIII", 7, usec, len(p), len(p)) + p
    return out


def _tshark(path: Path, *fields: str) -> subprocess.CompletedProcess[str]:
    args = ["tshark", "-r", str(path), "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    return subprocess.run(args, capture_output=True, text=True)


# -- item 3: pcapng and pcap corner cases, as tshark reads them -------------------------------

def test_simple_packet_block_is_cut_at_the_interface_snaplen(tmp_path: Path) -> None:
    """pcapng-test-generator test012: original 316 bytes, snaplen 315 → 315 bytes (tshark)."""
    data = bytes(range(256)) + bytes(60)
    path = tmp_path / "spb.pcapng"
    path.write_bytes(_shb() + _idb(snaplen=315) + _block(3, struct.pack("<I", 316) + data))
    [(ts, frame, iface)] = list(read_capture(path))
    assert (ts, frame, iface) == (0, data[:315], "if0")
    out = _tshark(path, "frame.cap_len", "frame.len")
    assert out.stdout.split() == ["315", "316"]


@pytest.mark.parametrize("version,ok", [((1, 0), True), ((1, 2), True), ((1, 1), False),
                                        ((2, 0), False), ((0, 9), False)])
def test_pcapng_section_versions_as_tshark(tmp_path: Path, version: tuple[int, int],
                                           ok: bool) -> None:
    path = tmp_path / "v.pcapng"
    path.write_bytes(_shb(*version) + _idb() + _epb(0, FRAME))
    out = _tshark(path, "frame.len")
    assert (out.returncode == 0) == ok, out.stderr
    if ok:
        assert [f for _, f, _ in read_capture(path)] == [FRAME]
    else:
        assert "unknown SHB version" in out.stderr
        with pytest.raises(CaptureError, match=rf"version {version[0]}\.{version[1]} is not "
                                               "supported"):
            list(read_capture(path))


def test_option_running_past_its_block_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "opt.pcapng"
    opts = struct.pack("<HH", 2, 40) + b"eth0"    # if_name claims 40 bytes, 4 are there
    path.write_bytes(_shb() + _idb(opts=opts) + _epb(0, FRAME))
    assert "Not enough data to handle option" in _tshark(path, "frame.len").stderr
    with pytest.raises(CaptureError, match="runs past its block"):
        list(read_capture(path))


def test_obsolete_packet_block_is_read_and_a_short_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "pb.pcapng"
    pb = _block(2, struct.pack("<HHIIII", 0, 0, 0, 1_000_000, len(FRAME), len(FRAME)) + FRAME)
    path.write_bytes(_shb() + _idb(name="eth0") + pb)
    assert list(read_capture(path)) == [(1_000_000_000, FRAME, "eth0")]
    assert _tshark(path, "frame.time_epoch").stdout.split() == ["1.000000000"]
    path.write_bytes(_shb() + _idb() + _block(2, struct.pack("<HH", 0, 0)))
    with pytest.raises(CaptureError, match="packet block too short"):
        list(read_capture(path))


def test_classic_pcap_major_version_1_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v1.pcap"
    path.write_bytes(_pcap(1, [FRAME], major=1, minor=0))
    assert "major version 1 unsupported" in _tshark(path, "frame.len").stderr
    with pytest.raises(CaptureError, match=r"pcap version 1\.0 is not supported"):
        list(read_capture(path))


def test_microseconds_past_a_second_carry_as_libpcap_hands_them_on(tmp_path: Path) -> None:
    """libpcap (sf-pcap.c) passes tv_usec on unchecked, so (7 s, 1,500,000 µs) is 8.5 s; a
    later frame at (8 s, 600,000 µs) is 0.1 s after it, not 0.9 s before."""
    path = tmp_path / "usec.pcap"
    path.write_bytes(_pcap(1, [FRAME], usec=1_500_000)
                     + struct.pack("<IIII", 8, 600_000, len(FRAME), len(FRAME)) + FRAME)
    assert [t for t, _, _ in read_capture(path)] == [8_500_000_000, 8_600_000_000]


# -- item 4: gzip --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["t.pcap.gz", "t.pcapng.gz", "no-suffix"])
def test_gzip_compressed_captures_read_by_magic_like_tshark(tmp_path: Path, name: str) -> None:
    frames = [FRAME, bytes(Ether() / IP() / UDP() / b"y")]
    plain = tmp_path / "plain"
    if "pcapng" in name:
        plain.write_bytes(_shb() + _idb(name="vif1.0") + b"".join(_epb(0, f, i + 1)
                                                                   for i, f in enumerate(frames)))
    else:
        wrpcap(str(plain), [Ether(f) for f in frames])
    path = tmp_path / name
    path.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(read_capture(path)) == list(read_capture(plain))
    assert [f for _, f, _ in read_capture(path)] == frames
    raw = plain.read_bytes()   # two gzip members back to back, as `cat a.gz b.gz`
    (tmp_path / "two.gz").write_bytes(gzip.compress(raw[:30]) + gzip.compress(raw[30:]))
    assert list(read_capture(tmp_path / "two.gz")) == list(read_capture(plain))
    lens = _tshark(path, "frame.len").stdout.split()
    assert lens == [str(len(f)) for f in frames]


def test_cut_gzip_keeps_whole_records_then_says_truncated(tmp_path: Path) -> None:
    plain = _pcap(1, [FRAME] * 50)
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(gzip.compress(plain)[:-30])
    got: list[bytes] = []
    with pytest.raises(CaptureError, match="truncated"):
        for _, f, _ in read_capture(path):
            got.append(f)
    assert got and all(f == FRAME for f in got)
    (tmp_path / "junk.gz").write_bytes(b"\x1f\x8bthis is no gzip")
    with pytest.raises(CaptureError, match="cannot be decompressed"):
        list(read_capture(tmp_path / "junk.gz"))


# -- item 5: non-Ethernet interfaces and --dlt-ethernet ------------------------------------

def test_pcapng_with_a_cooked_interface_replays_the_ethernet_ones_and_counts_the_rest(
        tmp_path: Path) -> None:
    sll = struct.pack(">HHH", 0, 1, 6) + bytes.fromhex("001122334455") + b"\0\0" + \
        struct.pack(">H", 0x0800) + IPPKT
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(_shb() + _idb(name="eth0") + _idb(113, name="any") + _epb(0, FRAME)
                     + _epb(1, sll) + _epb(1, sll) + _epb(0, FRAME))
    stats = CaptureStats()
    got = list(read_capture(path, stats=stats))
    assert [(f, i) for _, f, i in got] == [(FRAME, "eth0"), (FRAME, "eth0")]
    assert stats.frames == 2
    assert dict(stats.skipped) == {
        "interface 1 'any': link type 113 (LINUX_SLL), not Ethernet, give --dlt-ethernet": 2}
    # with the rewrite, the cooked packets come back as Ethernet: source from the SLL header
    got = list(read_capture(path, rewrite=EthernetRewrite(dst_mac=DST)))
    assert [f for _, f, _ in got][1] == DST + bytes.fromhex("001122334455") + b"\x08\x00" + IPPKT


@pytest.mark.parametrize("linktype", [113, 276, 101, 228, 0])
def test_cooked_and_raw_ip_become_ethernet_that_tshark_dissects(tmp_path: Path,
                                                                linktype: int) -> None:
    sender = bytes.fromhex("001122334455")
    if linktype == 113:
        pkt = struct.pack(">HHH", 4, 1, 6) + sender + b"\0\0" + struct.pack(">H", 0x0800) + IPPKT
    elif linktype == 276:
        pkt = struct.pack(">HHIHBB", 0x0800, 0, 3, 1, 4, 6) + sender + b"\0\0" + IPPKT
    elif linktype == 0:
        pkt = struct.pack("<I", 2) + IPPKT
    else:
        pkt = IPPKT
    path = tmp_path / "in.pcap"
    path.write_bytes(_pcap(linktype, [pkt]))
    with pytest.raises(CaptureError, match="--dlt-ethernet"):
        list(read_capture(path))
    [(_, frame, _)] = list(read_capture(path, rewrite=EthernetRewrite(SRC, DST)))
    assert frame == DST + SRC + b"\x08\x00" + IPPKT   # --src-mac wins over the cooked address
    wrpcap(str(tmp_path / "out.pcap"), [Ether(frame)])
    out = _tshark(tmp_path / "out.pcap", "eth.src", "eth.dst", "ip.src", "udp.dstport")
    assert out.stdout.split() == ["02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "53"]


def test_raw_ip_without_the_macs_it_lacks_says_which_flag(tmp_path: Path) -> None:
    path = tmp_path / "raw.pcap"
    path.write_bytes(_pcap(101, [IPPKT]))
    with pytest.raises(CaptureError, match="--dst-mac"):
        list(read_capture(path, rewrite=EthernetRewrite()))
    with pytest.raises(CaptureError, match="--src-mac"):
        list(read_capture(path, rewrite=EthernetRewrite(dst_mac=DST)))
