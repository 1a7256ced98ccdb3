"""The pcapng writer: block layout, per-interface records, and write errors that never reach the
switch."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.errors import CaptureError
from netsim.wire.capture import (
    FLUSH_BYTES,
    PcapngWriter,
    enhanced_packet,
    interface_description,
    read_pcapng,
    section_header,
)


def test_blocks_are_well_formed() -> None:
    for block in (section_header(), interface_description("vif1.0", description="xen1/vif1.0"),
                  enhanced_packet(0, 123, b"\x01" * 61, 2)):
        _, total = struct.unpack_from("<II", block)
        assert total == len(block) and total % 4 == 0
        assert struct.unpack_from("<I", block, total - 4)[0] == total
    assert section_header()[8:12] == struct.pack("<I", 0x1A2B3C4D)
    assert b"vif1.0" in interface_description("vif1.0")


def test_writer_round_trip_with_two_interfaces(tmp_path: Path) -> None:
    clock = ManualClock(start_ns=5_000_000_123)
    w = PcapngWriter(tmp_path / "x.pcapng", clock=clock)
    a, b = w.add_interface("eth0"), w.add_interface("eth0.5")
    tap_a, tap_b = w.tap(a), w.tap(b)
    tap_a(b"A" * 64, True)
    clock.advance(0.5)
    tap_b(b"B" * 61, False)
    w.write(a, 7, b"C" * 60, 0)
    w.close()
    names, recs = read_pcapng(tmp_path / "x.pcapng")
    assert names == ["eth0", "eth0.5"]
    assert recs == [(0, 5_000_000_123, b"A" * 64, 2), (1, 5_500_000_123, b"B" * 61, 1),
                    (0, 7, b"C" * 60, 0)]
    with pytest.raises(CaptureError, match="interfaces must come before records"):
        w.add_interface("late")


def test_disk_full_is_kept_not_raised_into_the_switch_then_reported_on_close() -> None:
    w = PcapngWriter(Path("/dev/full"), clock=ManualClock())
    tap = w.tap(w.add_interface("eth0"))
    for _ in range(FLUSH_BYTES // 1000 + 50):
        tap(b"x" * 1000, True)  # crosses the flush threshold: the write fails inside the tap
    assert w.error is not None and w.lost > 0
    with pytest.raises(CaptureError, match=r"No space left.*record\(s\) after it not written"):
        w.close()


def test_reader_refuses_foreign_and_truncated_files() -> None:
    with pytest.raises(CaptureError, match="not a pcapng file"):
        read_pcapng(b"\xd4\xc3\xb2\xa1" + bytes(20))
    data = section_header() + interface_description("eth0") + enhanced_packet(0, 1, b"x" * 60)
    with pytest.raises(CaptureError, match=r"bad length|truncated"):
        read_pcapng(data[:-8])


def test_unwritable_path_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot write capture"):
        PcapngWriter(tmp_path / "no" / "such" / "dir.pcapng", clock=ManualClock())


def test_writer_to_a_file_object() -> None:
    buf = io.BytesIO()
    w = PcapngWriter(buf, clock=ManualClock())
    w.add_interface("p")
    w.write(0, 1, b"y" * 60)
    w.close()
    assert read_pcapng(buf.getvalue())[0] == ["p"]
