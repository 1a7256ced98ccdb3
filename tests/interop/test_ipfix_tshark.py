"""IPFIX export from a lab switch, end to end: known traffic between two VMs, flows ended by
the idle timeout on the lab's clock, sent over UDP on loopback; Wireshark's `cflow` dissector
(`tshark -d udp.port==N,cflow`) reads the same packet and octet counts, and so does
`hvsim ipfix listen`."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.lab.lab import Lab
from netsim.lab.topology import TopologyBuilder
from netsim.wire.capture import PcapngWriter
from netsim.wire.erspan import ipv4_header
from netsim.wire.frame import ethernet

pytestmark = pytest.mark.interop
SENT = {("10.0.0.1", "10.0.0.2"): (5, 200, 4000, 53), ("10.0.0.2", "10.0.0.1"): (3, 64, 53, 4000)}


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def topology(port: int, **ipfix: object):
    t = TopologyBuilder("flows")
    t.add_host("esx1", type="esxi", pifs=["vmnic0"])
    t.add_switch("esx1", "dvs", uplinks=["vmnic0"], ipfix={
        "collector_ip": "127.0.0.1", "collector_port": port, "observation_domain_id": 7,
        "idle_flow_timeout": 10, **ipfix})
    t.add_port_group("esx1", "lan", switch="dvs", vlan=10)
    for i in (1, 2):
        t.add_vm("esx1", f"vm{i}", nics=[{"network": "lan", "ip": f"10.0.0.{i}/24"}])
    return t.build()


async def send_known_traffic(lab: Lab) -> None:
    for (src, dst), (n, payload, sport, dport) in SENT.items():
        s = lab["vm" + src[-1]].ports[0]
        d = lab["vm" + dst[-1]].ports[0]
        for _ in range(n):
            udp = struct.pack("!HHHH", sport, dport, 8 + payload, 0) + bytes(payload)
            ip = ipv4_header(socket.inet_aton(src), socket.inet_aton(dst), 17, len(udp))
            s.vnic.send(ethernet(d.mac, s.mac, 0x0800, ip + udp))
            lab.clock.advance(0.5)  # type: ignore[attr-defined]
        await lab.settle()


def as_pcap(path: Path, datagrams: list[bytes], port: int) -> Path:
    """The datagrams as the loopback capture would show them."""
    w = PcapngWriter(path, clock=ManualClock())
    tap = w.tap(w.add_interface("lo"))
    lo = socket.inet_aton("127.0.0.1")
    for d in datagrams:
        udp = struct.pack("!HHHH", 40000, port, 8 + len(d), 0) + d
        tap(ethernet(bytes(6), bytes(6), 0x0800, ipv4_header(lo, lo, 17, len(udp)) + udp), True)
    w.close()
    return path


def receive(sock: socket.socket, settle_s: float = 0.3) -> list[bytes]:
    out = []
    sock.settimeout(settle_s)
    while True:
        try:
            out.append(sock.recv(65535))
        except TimeoutError:
            return out


async def test_tshark_decodes_exported_flows_with_the_counts_of_known_traffic(
        tmp_path: Path) -> None:
    col = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    col.bind(("127.0.0.1", 0))
    port = col.getsockname()[1]
    try:
        async with Lab(topology(port)) as lab:
            await send_known_traffic(lab)
            assert receive(col, 0.05) == []  # nothing ended yet: the flows are 4 s old
            await lab.run_for(11)  # idle timeout: both flows end and are exported
            datagrams = receive(col)
            assert datagrams
        assert receive(col, 0.05) == []  # nothing was left open to flush at the end
    finally:
        col.close()
    pcap = as_pcap(tmp_path / "ipfix.pcapng", datagrams, port)
    out = tshark("-r", str(pcap), "-d", f"udp.port=={port},cflow", "-Y", "cflow.srcaddr",
                 "-T", "fields", "-E", "aggregator=;", "-e", "cflow.version", "-e", "cflow.od_id",
                 "-e", "cflow.srcaddr", "-e", "cflow.dstaddr", "-e", "cflow.packets",
                 "-e", "cflow.octets", "-e", "cflow.srcport", "-e", "cflow.dstport",
                 "-e", "cflow.vlanid", "-e", "cflow.protocol", "-e", "cflow.flow_end_reason")
    flows = {}
    for line in out.splitlines():
        cols = [c.split(";") for c in line.split("\t")]
        for i in range(len(cols[2])):
            version, od_id = cols[0][0], cols[1][0]
            src, dst, pk, oc, sp, dp, vlan, proto, reason = (c[i] for c in cols[2:])
            assert (version, od_id, vlan, proto, reason) == ("10", "7", "10", "17", "1"), line
            flows[src, dst] = (int(pk), int(oc), int(sp), int(dp))
    assert flows == {k: (n, n * (20 + 8 + payload), sp, dp)
                     for k, (n, payload, sp, dp) in SENT.items()}


async def run_lab(port: int) -> None:
    async with Lab(topology(port)) as lab:
        await send_known_traffic(lab)


def test_hvsim_ipfix_listen_prints_one_line_per_flow_and_counts_bad_datagrams() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "netsim", "ipfix", "listen", "--port", "0",
                             "--json", "--count", "2", "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("listening for IPFIX on 127.0.0.1:"), first
        port = int(first.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00\x0a\x00\x05junk", ("127.0.0.1", port))
        # the listener reports it before the lab's datagrams come (not a fixed sleep)
        bad = proc.stderr.readline()
        asyncio.run(run_lab(port))
        # stopping the lab ends the open flows (flowEndReason 4, forced) and exports them
        out, err = proc.communicate(timeout=60)
        err = bad + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    recs = [json.loads(line) for line in out.splitlines()]
    got = {(r["sourceIPv4Address"], r["destinationIPv4Address"]):
           (r["packetDeltaCount"], r["octetDeltaCount"], r["flowEndReason"]) for r in recs}
    assert got == {k: (n, n * (28 + payload), 4) for k, (n, payload, _, _) in SENT.items()}
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[0].startswith("bad datagram from 127.0.0.1:"), err
    assert lines[-1].startswith("ipfix listen: 2 datagrams, 2 records, 1 bad (last: "), err


@pytest.mark.parametrize("args", [["--bind", "203.0.113.77"], ["--port", "70000"],
                                  ["--bind", "no such host!"]])
def test_hvsim_ipfix_listen_refuses_what_it_cannot_bind_in_one_line(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "netsim", "ipfix", "listen", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "error:" in proc.stderr


def test_tshark_decodes_ipv4_and_ipv6_flows_of_one_message_by_both_templates(
        tmp_path: Path) -> None:
    """IPv6 flows metered on a switch (IEs 27/28 in template 257) and IPv4 ICMP flows
    (icmpTypeCodeIPv4, IE 32, in template 256), exported in one message: Wireshark's cflow
    dissector reads both templates and every record with no expert warnings."""
    from netsim.clock import ManualClock as Clock
    from netsim.dataplane.flowmeter import FlowMeter, IpfixConfig
    from netsim.dataplane.port import Vif
    from netsim.dataplane.switch import PortGroup, StandardSwitch
    from netsim.wire.ipfix import encode_messages

    sw = StandardSwitch("dvs", clock=Clock())
    sw.add_port_group(PortGroup("pg", vlan=10))
    macs = [bytes([0, 0x50, 0x56, 0, 0, i]) for i in (1, 2)]
    a, _b = (sw.attach(Vif(i + 1, 0, mac=m), "pg") for i, m in enumerate(macs))
    meter = FlowMeter(IpfixConfig("127.0.0.1"), sw.clock)
    meter.attach(sw)
    v6 = [bytes.fromhex(f"20010db8000000000000000000000{i:03x}") for i in (1, 2)]

    def ip6(nh: int, l4: bytes) -> bytes:
        return ethernet(macs[1], macs[0], 0x86DD,
                        struct.pack("!IHBB", 6 << 28, len(l4), nh, 64) + v6[0] + v6[1] + l4)

    a.vnic.send(ip6(17, struct.pack("!HHHH", 5353, 53, 8, 0)))
    a.vnic.send(ip6(58, bytes((128, 0)) + bytes(6)))  # ICMPv6 echo request
    lo1, lo2 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    icmp = bytes((3, 3)) + bytes(6)  # port unreachable
    a.vnic.send(ethernet(macs[1], macs[0], 0x0800, ipv4_header(lo1, lo2, 1, len(icmp)) + icmp))
    recs = meter.flush()
    assert len(recs) == 3
    (msg,) = encode_messages(recs, export_time=1_700_000_000, seq=0, domain_id=7)
    pcap = as_pcap(tmp_path / "ipfix6.pcapng", [msg], 4739)
    tmpl = tshark("-r", str(pcap), "-d", "udp.port==4739,cflow", "-T", "fields",
                  "-E", "aggregator=;", "-e", "cflow.template_id", "-e", "_ws.expert")
    ids, expert = tmpl.strip().split("\t") if "\t" in tmpl.strip() else (tmpl.strip(), "")
    assert {"256", "257"} <= set(ids.split(";")) and expert == "", tmpl
    fields = ["cflow.srcaddr", "cflow.dstaddr", "cflow.srcaddrv6", "cflow.dstaddrv6",
              "cflow.protocol", "cflow.srcport", "cflow.dstport", "cflow.icmp_type_code_ipv4",
              "cflow.icmp_ipv6_type", "cflow.icmp_ipv6_code", "cflow.packets", "cflow.octets"]
    out = tshark("-r", str(pcap), "-d", "udp.port==4739,cflow", "-T", "json",
                 *(x for f in fields for x in ("-e", f)))
    got = json.loads(out)[0]["_source"]["layers"]
    assert got["cflow.srcaddr"] == ["10.0.0.1"] and got["cflow.dstaddr"] == ["10.0.0.2"]
    assert got["cflow.srcaddrv6"] == ["2001:db8::1"] * 2
    assert got["cflow.dstaddrv6"] == ["2001:db8::2"] * 2
    # records in set order: IPv4 (template 256) first, then the two IPv6 flows
    assert sorted(got["cflow.protocol"]) == ["1", "17", "58"]
    assert [int(x, 0) for x in got["cflow.icmp_type_code_ipv4"]] == [0x0303]  # v4 only
    # icmpTypeCodeIPv6 (IE 139), which Wireshark splits into type and code: one per v6 flow
    v6_icmp = sorted(zip(got["cflow.icmp_ipv6_type"], got["cflow.icmp_ipv6_code"],
                         strict=True))
    assert v6_icmp == [("0", "0"), ("128", "0")]
    v6rows = sorted(zip(got["cflow.protocol"][1:], got["cflow.dstport"][1:], strict=True))
    assert v6rows == [("17", "53"), ("58", "0")]
    assert got["cflow.octets"][0] == str(20 + 8) and sorted(got["cflow.octets"][1:]) == \
        ["48", "48"]
