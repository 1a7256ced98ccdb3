"""Our LACPDUs as Wireshark reads them: tshark's `lacp` dissector finds every field where we
put it, with no expert warnings, for the PDUs two LAGs really exchange while they negotiate."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.lag import Lag, LagConfig, LagPort
from netsim.dataplane.port import Port
from netsim.wire.capture import PcapngWriter
from netsim.wire.lacp import decode_lacpdu

pytestmark = pytest.mark.interop
SYS_A = bytes.fromhex("020000000a00")
SYS_B = bytes.fromhex("020000000b00")


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def negotiation() -> list[bytes]:
    """Every PDU on the wire between a fast active LAG and a slow passive one, in order."""
    a = Lag(LagPort("po1"), LagConfig(rate="fast", key=7, system_priority=100), system=SYS_A)
    b = Lag(LagPort("lag1"), LagConfig(lacp="passive", rate="slow", key=9), system=SYS_B)
    pa, pb = Port("a0"), Port("b0")
    a.add_member(pa)
    b.add_member(pb)
    a.start(0)
    b.start(0)
    wire = []
    for _ in range(6):
        for x, y in ((pa, pb), (pb, pa)):
            while (f := x.queue.get_nowait()) is not None:
                wire.append(f)
                y.receive(f)
    return wire


def test_tshark_dissects_the_pdus_of_a_negotiation(tmp_path: Path) -> None:
    frames = negotiation()
    assert len(frames) >= 3
    w = PcapngWriter(tmp_path / "lacp.pcapng", clock=ManualClock())
    tap = w.tap(w.add_interface("a0"))
    for f in frames:
        tap(f, True)
    w.close()
    fields = ["lacp.version", "lacp.actor.sys_priority", "lacp.actor.sysid", "lacp.actor.key",
              "lacp.actor.port", "lacp.actor.state", "lacp.partner.sysid", "lacp.partner.key",
              "lacp.partner.state", "lacp.collector.max_delay", "_ws.expert"]
    out = tshark("-r", str(tmp_path / "lacp.pcapng"), "-Y", "lacp", "-T", "fields",
                 *(x for f in fields for x in ("-e", f))).splitlines()
    assert len(out) == len(frames)
    for line, frame in zip(out, frames, strict=True):
        got = dict(zip(fields, line.split("\t"), strict=True))
        pdu = decode_lacpdu(frame)
        assert int(got["lacp.version"], 0) == 1
        assert got["_ws.expert"] == "", got
        assert got["lacp.actor.sysid"] == ":".join(f"{x:02x}" for x in pdu.actor.system)
        assert int(got["lacp.actor.key"], 0) == pdu.actor.key
        assert int(got["lacp.actor.port"], 0) == pdu.actor.port
        assert int(got["lacp.actor.state"], 0) == pdu.actor.state
        assert int(got["lacp.partner.state"], 0) == pdu.partner.state
        assert int(got["lacp.partner.key"], 0) == pdu.partner.key
    # the last PDU from each side: both in sync, collecting and distributing
    states = tshark("-r", str(tmp_path / "lacp.pcapng"), "-Y", "lacp", "-T", "fields",
                    "-e", "lacp.actor.sysid", "-e", "lacp.actor.state_str").splitlines()
    last = {sysid: st for sysid, st in (ln.split("\t") for ln in states)}
    # Wireshark writes Expired Defaulted Distributing Collecting Synchronization aGgregation
    # Short-timeout Activity, '*' where clear: the active fast end and the passive slow one
    assert last == {"02:00:00:00:0a:00": "**DCSGSA", "02:00:00:00:0b:00": "**DCSG**"}, last


def test_tshark_reads_a_marker_and_our_response(tmp_path: Path) -> None:
    """A partner's Marker Information PDU and the Marker Response our LACP member sends back,
    as Wireshark's `marker` dissector reads them: TLV types 1 and 2, the same requester
    port/system/transaction id, no expert warnings."""
    from netsim.wire.lacp import MarkerPdu, encode_marker

    lag = Lag(LagPort("po1"), LagConfig(rate="fast"), system=SYS_A)
    m = Port("a0")
    lag.add_member(m)
    while m.queue.get_nowait() is not None:  # the first LACPDU
        pass
    info = encode_marker(SYS_B, MarkerPdu(0x0102, SYS_B, 0xA1B2C3D4))
    m.receive(info)
    response = m.queue.get_nowait()
    assert response is not None
    w = PcapngWriter(tmp_path / "marker.pcapng", clock=ManualClock())
    tap = w.tap(w.add_interface("a0"))
    tap(info, False)
    tap(response, True)
    w.close()
    fields = ["slow.subtype", "marker.version", "marker.tlvType", "marker.tlvLen",
              "marker.requesterPort", "marker.requesterSystem", "marker.requesterTransId",
              "eth.src", "_ws.expert"]
    # -E occurrence=f: the first TLV (the Terminator is a second tlvType/tlvLen)
    out = tshark("-r", str(tmp_path / "marker.pcapng"), "-Y", "marker", "-T", "fields",
                 "-E", "occurrence=f",
                 *(x for f in fields for x in ("-e", f))).splitlines()
    rows = [dict(zip(fields, line.split("\t"), strict=True)) for line in out]
    assert [int(r["marker.tlvType"], 0) for r in rows] == [1, 2]
    for r in rows:
        assert int(r["slow.subtype"], 0) == 2 and int(r["marker.version"], 0) == 1
        assert int(r["marker.tlvLen"], 0) == 16
        assert int(r["marker.requesterPort"], 0) == 0x0102
        assert r["marker.requesterSystem"] == "02:00:00:00:0b:00"
        assert int(r["marker.requesterTransId"], 0) == 0xA1B2C3D4
        assert r["_ws.expert"] == "", r
    assert rows[1]["eth.src"] != "02:00:00:00:0b:00"  # the response is from our member
