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
import time
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
        time.sleep(0.2)
        asyncio.run(run_lab(port))
        # stopping the lab ends the open flows (flowEndReason 4, forced) and exports them
        out, err = proc.communicate(timeout=60)
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
