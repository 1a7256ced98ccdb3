"""What hvsim's XenServer bond does is what Open vSwitch (userspace datapath) does, side by side
in the same situation - an LACP bond (`lacp=active`, `bond_mode=balance-tcp`,
`other_config:lacp-fallback-ab=true`) whose partner never speaks LACP:

- it falls back to active-backup: `ovs-appctl bond/show` says LACP is only "configured" and one
  member is active; our bond reports the fallback and distributes on one member;
- a Marker Information PDU on a member is counted (`lacp/show-stats`: "RX Marker Request
  PDUs") and not answered - as our XenServer bond does (our switch/ESXi LAGs answer, 802.1AX);
- when the active member loses its carrier, OVS sends a RARP learning packet for each MAC it
  learned on another port, out the new active member: byte for byte our
  `rarp_learning_packet` (OVS sends it unpadded; ours is padded to the 60-byte minimum).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from netsim.clock import ManualClock
from netsim.dataplane.lag import Lag, LagConfig, LagPort, rarp_learning_packet
from netsim.dataplane.port import Pif, Vif
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.wire import frame as fr
from netsim.wire.lacp import MarkerPdu, encode_marker

from .ovs import OvsBridge

pytestmark = pytest.mark.interop
VM = bytes.fromhex("00163e0000aa")
PEER_SYS = bytes.fromhex("02000000bb01")

# argv: interface, link to set down once listening (or -), seconds; optionally a file to
# create once listening and the hex of a control frame: seen, the capture ends 1 s later
# (readiness and the control replace fixed 0.3 s / 1.5 s windows a loaded machine
# can outrun: python3's start alone takes longer there)
CAPTURE = r'''
import select, socket, subprocess, sys, time
want, down, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
ready, control = (sys.argv[4], bytes.fromhex(sys.argv[5])) if len(sys.argv) > 5 else (None, None)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((want, 0))
s.setblocking(False)
if ready:
    open(ready, "w").close()
if down != "-":
    subprocess.run(["ip", "link", "set", down, "down"], check=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    r, _, _ = select.select([s], [], [], 0.1)
    if r:
        try:
            while True:
                f = s.recv(65535)
                print(f.hex())
                if f == control:
                    end = min(end, time.monotonic() + 1.0)
        except BlockingIOError:
            pass
'''

SEND = r'''
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))
'''


def appctl(br: OvsBridge, *args: str) -> str:
    return br._ns("ovs-appctl", "-t", f"{br.tmp}/vswitchd.ctl", *args).stdout


def until(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


@pytest.fixture()
def ovs_bond(tmp_path: Path):
    with OvsBridge(tmp_path, {"a": []}) as br:  # port oa on br0, its outside end ha
        for i in range(2):
            br._ns("ip", "link", "add", f"b{i}", "type", "veth", "peer", "name", f"hb{i}")
            for dev in (f"b{i}", f"hb{i}"):
                br._ns("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
                br._ns("ip", "link", "set", dev, "up")
        br.vsctl("add-bond", "br0", "bond0", "b0", "b1", "lacp=active", "bond_mode=balance-tcp",
                 "other_config:lacp-time=fast", "other_config:lacp-fallback-ab=true")
        br._ns("ip", "link", "set", "br0", "up")
        yield br


def our_xen_bond() -> tuple[Lag, list[Pif], Vif]:
    """The same situation in hvsim: a XenServer LACP bond as the topology makes it (no marker
    responder), fallback on, nobody speaking LACP on its members, one VM learned."""
    lag = Lag(LagPort("bond0"), LagConfig(mode="lacp", rate="fast", hashing="tcpudp_ports",
                                          marker_responder=False, lacp_fallback_ab=True))
    eth = [Pif("eth0"), Pif("eth1")]
    for p in eth:
        lag.add_member(p)
    sw = StandardSwitch("xenbr0", clock=ManualClock())
    sw.add_uplink(lag.port)
    sw.add_port_group(PortGroup("xenbr0"))
    vif = sw.attach(Vif(1, 0, mac=VM), "xenbr0")
    vif.vnic.send(fr.ethernet(fr.BROADCAST, VM, 0x88B5, bytes(46)))
    for p in eth:
        while p.queue.get_nowait() is not None:
            pass
    return lag, eth, vif


def test_fallback_markers_and_learning_packets_match_open_vswitch(ovs_bond) -> None:
    br = ovs_bond
    # 1. no LACP partner: OVS falls back to active-backup; so do we
    assert until(lambda: re.search(r"active member mac: \S+\((b[01])\)",
                                   appctl(br, "bond/show", "bond0")), 10)
    show = appctl(br, "bond/show", "bond0")
    assert "lacp_status: configured" in show and "lacp_fallback_ab: true" in show, show
    active = re.search(r"active member mac: \S+\((b[01])\)", show).group(1)
    backup = "b1" if active == "b0" else "b0"
    lag, eth, _ = our_xen_bond()
    st = lag.status()
    assert st["fallback_ab"] is True and len(lag.distributing) == 1, st

    # 2. a Marker Information PDU: counted, never answered - by OVS and by our Xen bond
    marker = encode_marker(PEER_SYS, MarkerPdu(1, PEER_SYS, 0x1234))
    cap = br._ns("sh", "-c", f"python3 -c '{_q(CAPTURE)}' h{active} - 30 {br.tmp}/r1 "
                 f"{marker.hex()} & {_until_exists(f'{br.tmp}/r1')}; "
                 f"python3 -c '{_q(SEND)}' h{active} {marker.hex()}; wait").stdout
    seen = [bytes.fromhex(x) for x in cap.split()]
    assert [f for f in seen if f == marker], "the capture missed the marker we sent"
    responses = [f for f in seen if f[12:14] == b"\x88\x09" and f[14] == 2 and f[16] == 2]
    assert responses == [], responses
    stats = appctl(br, "lacp/show-stats", "bond0")
    assert re.search(rf"member: {active}:.*?RX Marker Request PDUs: 1\b", stats, re.S), stats
    eth[0].receive(marker)
    assert eth[0].queue.get_nowait() is None
    assert lag.status()["members"][0]["markers_rx"] == 1

    # 3. learning packets: OVS learns a MAC on port oa, the active member loses its carrier
    br._ns("python3", "-c", SEND, "ha", fr.ethernet(fr.BROADCAST, VM, 0x88B5, bytes(46)).hex())
    assert until(lambda: "00:16:3e:00:00:aa" in appctl(br, "fdb/show", "br0"), 5)
    cap = br._ns("python3", "-c", CAPTURE, f"h{backup}", f"h{active}", "3").stdout
    rarps = [bytes.fromhex(x) for x in cap.split() if bytes.fromhex(x)[12:14] == b"\x80\x35"]
    # one per MAC OVS learned off the bond (ours from port oa, and br0's own internal port)
    assert VM in {f[6:12] for f in rarps}, cap
    for ovs_frame in rarps:
        ours = rarp_learning_packet(ovs_frame[6:12])
        assert ours[:len(ovs_frame)] == ovs_frame and not any(ours[len(ovs_frame):]), (
            ovs_frame.hex(), ours.hex())
    ours = rarp_learning_packet(VM)
    # ... and ours, when our active member loses its carrier
    eth[0].set_link(False)
    assert eth[1].queue.get_nowait() == ours and lag.status()["learning_packets"] == 1


def _q(script: str) -> str:
    """`script` inside single quotes for sh."""
    return script.replace("'", "'\"'\"'")


def _until_exists(path: str) -> str:
    """sh: wait (at most 30 s) until `path` exists, i.e. the capture listens."""
    return f"i=0; until [ -e {path} ] || [ $i -ge 600 ]; do sleep 0.05; i=$((i+1)); done"


def test_moving_an_slb_hash_sends_no_learning_packet_in_ovs_nor_in_ours(ovs_bond) -> None:
    """`bond/migrate` moves one balance-slb hash to the other member (what `bond_rebalance`
    does by load): OVS sends no RARP for it - the moved MAC's own next frame, which now leaves
    by the new member, teaches the physical switch - and our rebalance sends none either."""
    br = ovs_bond
    br.vsctl("set", "port", "bond0", "lacp=off", "bond_mode=balance-slb")
    assert until(lambda: "bond_mode: balance-slb" in appctl(br, "bond/show", "bond0"), 10)
    vm_frame = fr.ethernet(fr.BROADCAST, VM, 0x88B5, bytes(46))
    br._ns("python3", "-c", SEND, "ha", vm_frame.hex())
    assert until(lambda: "00:16:3e:00:00:aa" in appctl(br, "fdb/show", "br0"), 5)
    basis = re.search(r"bond-hash-basis: (\d+)", appctl(br, "bond/show", "bond0")).group(1)
    h = appctl(br, "bond/hash", "00:16:3e:00:00:aa", "0", basis).strip()  # the VM's hash
    assert h.isdigit(), h
    time.sleep(2.0)  # let what the mode change sent go by
    for target in ("b0", "b1"):  # one of them is a move
        ready = f"{br.tmp}/r-{target}"
        cap = br._ns("sh", "-c", f"python3 -c '{_q(CAPTURE)}' h{target} - 30 {ready} "
                     f"{vm_frame.hex()} & {_until_exists(ready)}; "
                     f"ovs-appctl -t {br.tmp}/vswitchd.ctl bond/migrate bond0 {h} {target} "
                     f"2>&1; sleep 0.3; python3 -c '{_q(SEND)}' ha {vm_frame.hex()}; "
                     "wait").stdout
        assert "migrated" in cap, cap  # ovs-appctl's answer, between the frames
        frames = [bytes.fromhex(x) for x in cap.split()
                  if re.fullmatch(r"(?:[0-9a-f]{2}){14,}", x)]
        # the control: the VM's next frame leaves by the member its hash moved to
        assert vm_frame in frames, (target, cap)
        rarps = [f for f in frames if f[12:14] == b"\x80\x35"]
        assert rarps == [], (target, rarps)
    lag = Lag(LagPort("bond0"), LagConfig(mode="balance-slb"))
    eth = [Pif("eth0"), Pif("eth1")]
    for p in eth:
        lag.add_member(p)
    for i in range(8):  # eight source MACs, one busy: a rebalance moves buckets
        for _ in range(40 if i == 0 else 1):
            lag.port.transmit(fr.ethernet(fr.BROADCAST, bytes([0, 0x16, 0x3E, 0, 1, i]),
                                          0x88B5, bytes(1000)))
    for p in eth:
        while p.queue.get_nowait() is not None:
            pass
    assert lag.rebalance() >= 1
    assert all(p.queue.get_nowait() is None for p in eth) and lag.learning_packets_sent == 0
