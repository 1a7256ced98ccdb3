"""Run inside the test's network namespace: send frames on veth ends, report what arrives.

Reads JSON `{"ports": [...], "sends": [[port, hex], ...], "by_source": bool}` on stdin and prints
JSON `[{port: [hex, ...]}, ...]`, one dict per send. By default each send is written on the port's
outside end, then every other end is read until quiet for QUIET_S (so the switch's learning sees
the sends in order). With `by_source` (every send's source MAC distinct) all frames go at once and
what arrives is given to the send with its source MAC: a frame the switch delays on a loaded
machine is still counted for the right send, and 120 sends cost one quiet wait, not 120.

A Linux packet socket hands the outer VLAN tag over in PACKET_AUXDATA (the kernel untags on
receive whatever the NIC offloads say), so it is put back from there, as libpcap does.
"""
from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
QUIET_S = 0.5  # a loaded CI machine can hold OVS's forwarding back well past 0.1 s


def _open(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def _recv(s: socket.socket) -> bytes:
    data, anc, _, _ = s.recvmsg(65535, 4096)
    for level, kind, cd in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cd) >= 20:
            status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", cd[:20])
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


def _drain(socks: dict[str, socket.socket], until_quiet: float) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    last = time.monotonic()
    while time.monotonic() - last < until_quiet:
        ready, _, _ = select.select(list(socks.values()), [], [], until_quiet)
        for name, s in socks.items():
            if s in ready:
                try:
                    while True:
                        got.setdefault(name, []).append(_recv(s).hex())
                        last = time.monotonic()
                except BlockingIOError:
                    pass
    return got


def _by_source(socks: dict[str, socket.socket], sends: list[list[str]]) -> list[dict]:
    srcs = [bytes.fromhex(h)[6:12].hex() for _, h in sends]
    assert len(set(srcs)) == len(srcs), "by_source needs a distinct source MAC per send"
    which = {src: i for i, src in enumerate(srcs)}
    for port, hexframe in sends:
        socks[port].send(bytes.fromhex(hexframe))
    results: list[dict[str, list[str]]] = [{} for _ in sends]
    for port, frames in _drain(socks, 2 * QUIET_S).items():
        for f in frames:
            i = which.get(f[12:24])
            if i is not None and sends[i][0] != port:  # not the send seen leaving its own port
                results[i].setdefault(port, []).append(f)
    return results


def main() -> None:
    req = json.load(sys.stdin)
    socks = {p: _open(p) for p in req["ports"]}
    _drain(socks, 0.3)
    if req.get("by_source"):
        json.dump(_by_source(socks, req["sends"]), sys.stdout)
        return
    results = []
    for port, hexframe in req["sends"]:
        socks[port].send(bytes.fromhex(hexframe))
        got = _drain(socks, QUIET_S)
        got.pop(port, None)
        results.append(got)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
