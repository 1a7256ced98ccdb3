"""A minimal guest network stack on raw bytes: what a VM needs to be pinged and to route.

`Guest` holds a VM's interfaces (MAC, IPv4 address, optional 802.1Q tag for VGT port groups),
an ARP cache, and a static routing table. It is a pure state machine: `receive(ifindex, frame)`
and `ping`/`send_udp` return the frames to transmit as `(ifindex, bytes)` pairs; the caller
moves them (`netsim.lab.lab` runs one asyncio task per guest on the fabric's clock). It answers ARP
requests and ICMP echo requests, records echo replies and UDP datagrams in `inbox`, and — for a
`router` VM — forwards IPv4 between its interfaces (TTL decremented, checksum recomputed, ICMP
time-exceeded when TTL runs out). Headers are packed with `struct`: no Scapy on the data path.
Nothing is dropped without a counter (`counters`).
"""
from __future__ import annotations

import ipaddress
import struct
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from netsim.wire.frame import mac_to_bytes
from netsim.wire.framespec import checksum as inet_checksum

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_8021Q = 0x8100
PROTO_ICMP = 1
PROTO_UDP = 17
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
BROADCAST = b"\xff" * 6
PENDING_PER_HOP = 16  # packets queued per unresolved next hop; older ones are dropped (counted)

Tx = tuple[int, bytes]  # (interface index, frame)
_Hop = tuple[int, ipaddress.IPv4Address]  # (interface index, next hop)
#: EtherType ARP, then an ARP request's fixed header for Ethernet/IPv4 (htype 1, ptype 0x0800,
#: hlen 6, plen 4, op 1): bytes 12..21 of an untagged ARP request.
_ARP_REQUEST_HDR = b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01"


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, *, ident: int = 0,
                ttl: int = 64) -> bytes:
    """A 20-byte IPv4 header (DF set) with its checksum."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident & 0xFFFF, 0x4000,
                      ttl, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", inet_checksum(hdr)) + hdr[12:]


def icmp_message(icmp_type: int, code: int, rest: bytes, payload: bytes) -> bytes:
    """An ICMP message; `rest` is the 4 bytes after the checksum (id+seq for echo)."""
    body = struct.pack("!BBH", icmp_type, code, 0) + rest + payload
    return body[:2] + struct.pack("!H", inet_checksum(body)) + body[4:]


def udp_datagram(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP datagram with its checksum over the IPv4 pseudo-header."""
    length = 8 + len(payload)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, PROTO_UDP, length)
    csum = inet_checksum(pseudo + hdr + payload) or 0xFFFF
    return hdr[:6] + struct.pack("!H", csum) + payload


@dataclass(frozen=True)
class Iface:
    """One guest interface: its MAC, IPv4 address/prefix, and the tag it puts on frames."""

    mac: str
    ip: ipaddress.IPv4Interface | None = None
    vlan: int | None = None


@dataclass(frozen=True)
class Route:
    """A static route: `to` via next hop `via` (found on the interface whose subnet holds it)."""

    to: ipaddress.IPv4Network
    via: ipaddress.IPv4Address


@dataclass(frozen=True)
class Received:
    """Something delivered to the guest: an echo reply, a UDP datagram, or an ICMP error."""

    kind: str  # echo-reply | udp | icmp-error
    ifindex: int
    src: ipaddress.IPv4Address
    ident: int = 0  # echo id / UDP source port / ICMP type
    seq: int = 0  # echo seq / UDP destination port / ICMP code
    payload: bytes = b""
    ttl: int = 0


@dataclass
class _IfState:
    mac: bytes
    ip: bytes | None
    net: ipaddress.IPv4Network | None
    vlan: int | None
    eth_hdr_cache: dict[tuple[bytes, int], bytes] = field(default_factory=dict)


class Guest:
    """The network stack of one VM (see the module docstring)."""

    def __init__(self, name: str, ifaces: Sequence[Iface], *, router: bool = False,
                 gateway: ipaddress.IPv4Address | None = None,
                 routes: Iterable[Route] = (), inbox_size: int = 4096) -> None:
        self.name = name
        self.ifaces = tuple(ifaces)
        self.router = router
        self.gateway = gateway
        self.routes = tuple(routes)
        self._if = [_IfState(mac_to_bytes(i.mac), i.ip.ip.packed if i.ip else None,
                             i.ip.network if i.ip else None, i.vlan) for i in self.ifaces]
        self._my_ips = {s.ip for s in self._if if s.ip is not None}
        self.arp: dict[bytes, bytes] = {}  # IPv4 (4 bytes) -> MAC (6 bytes)
        self._pending: dict[tuple[int, bytes], deque[bytes]] = {}
        self.inbox: deque[Received] = deque(maxlen=inbox_size)
        self._counters: Counter[str] = Counter()
        self._arp_not_for_me = 0  # a plain int: it counts the most frequent frame of all
        self._ident = 0
        #: True while the guest's reader is handing it frames taken off its port's queue
        #: (a switch then queues for it rather than deciding for it: `VmPort.set_reader`)
        self.reading = False
        # route() answers by destination (interfaces, routes and gateway are fixed at creation)
        self._route_cache: dict[ipaddress.IPv4Address, _Hop | None] = {}

    @property
    def counters(self) -> Counter[str]:
        """What happened to frames, by reason (`rx-not-for-me`, `tx-arp-request`, ...)."""
        if self._arp_not_for_me:  # fold the fast path's count in (so clear() works too)
            self._counters["rx-arp-not-for-me"] += self._arp_not_for_me
            self._arp_not_for_me = 0
        return self._counters

    def iface_state(self, ifindex: int) -> _IfState | None:
        """Interface `ifindex`'s MAC, IPv4 address (4 bytes) and tag; None if there is none."""
        return self._if[ifindex] if 0 <= ifindex < len(self._if) else None

    # ------------------------------------------------------------------------- addressing
    def addresses(self) -> list[ipaddress.IPv4Address]:
        """This guest's IPv4 addresses, one per addressed interface."""
        return [i.ip.ip for i in self.ifaces if i.ip is not None]

    def route(self, dst: ipaddress.IPv4Address) -> tuple[int, ipaddress.IPv4Address] | None:
        """(interface, next hop) toward `dst`: connected networks, static routes (longest prefix
        first), then the default gateway; None when there is no route."""
        cache = self._route_cache
        if dst in cache:
            return cache[dst]
        if len(cache) >= 64:  # small: a ping looks its destination up 3 times in a row
            cache.clear()
        hop = cache[dst] = self._lookup_route(dst)
        return hop

    def _lookup_route(self, dst: ipaddress.IPv4Address) -> _Hop | None:
        best: tuple[int, int, ipaddress.IPv4Address] | None = None  # (prefix, if, next hop)
        for idx, i in enumerate(self.ifaces):
            if i.ip is not None and dst in i.ip.network and (
                    best is None or i.ip.network.prefixlen > best[0]):
                best = (i.ip.network.prefixlen, idx, dst)
        for r in self.routes:
            if dst in r.to and (best is None or r.to.prefixlen > best[0]):
                hop = self._connected(r.via)
                if hop is not None:
                    best = (r.to.prefixlen, hop, r.via)
        if best is None and self.gateway is not None:
            hop = self._connected(self.gateway)
            if hop is not None:
                best = (0, hop, self.gateway)
        return None if best is None else (best[1], best[2])

    def _connected(self, addr: ipaddress.IPv4Address) -> int | None:
        for idx, i in enumerate(self.ifaces):
            if i.ip is not None and addr in i.ip.network:
                return idx
        return None

    # ----------------------------------------------------------------------------- sending
    def ping(self, dst: ipaddress.IPv4Address | str, *, ident: int = 1, seq: int = 1,
             payload: bytes = b"hvsim-ping-payload", ttl: int = 64) -> list[Tx]:
        """Frames that send one ICMP echo request to `dst` (an ARP request first if needed)."""
        if not isinstance(dst, ipaddress.IPv4Address):  # (IPv4Address(addr) re-parses str(addr))
            dst = ipaddress.IPv4Address(dst)
        msg = icmp_message(ICMP_ECHO_REQUEST, 0, struct.pack("!HH", ident, seq), payload)
        return self._send_ip(dst, PROTO_ICMP, msg, ttl=ttl)

    def send_udp(self, dst: ipaddress.IPv4Address | str, sport: int, dport: int,
                 payload: bytes, *, ttl: int = 64) -> list[Tx]:
        """Frames that send one UDP datagram to `dst`."""
        dst = ipaddress.IPv4Address(dst)
        hop = self.route(dst)
        if hop is None:
            self._counters["no-route"] += 1
            return []
        src = self._if[hop[0]].ip
        assert src is not None
        dgram = udp_datagram(src, dst.packed, sport, dport, payload)
        return self._send_ip(dst, PROTO_UDP, dgram, ttl=ttl)

    def _send_ip(self, dst: ipaddress.IPv4Address, proto: int, payload: bytes, *,
                 ttl: int) -> list[Tx]:
        hop = self.route(dst)
        if hop is None:
            self._counters["no-route"] += 1
            return []
        ifindex, nexthop = hop
        src = self._if[ifindex].ip
        assert src is not None
        self._ident = (self._ident + 1) & 0xFFFF
        packet = ipv4_header(src, dst.packed, proto, len(payload), ident=self._ident,
                             ttl=ttl) + payload
        return self._output(ifindex, nexthop.packed, packet)

    def _output(self, ifindex: int, nexthop: bytes, packet: bytes) -> list[Tx]:
        """Send an IPv4 packet to `nexthop` on `ifindex`, resolving its MAC by ARP first."""
        st = self._if[ifindex]
        if nexthop == b"\xff\xff\xff\xff" or (
                st.net is not None and nexthop == st.net.broadcast_address.packed):
            return [(ifindex, self._eth(st, BROADCAST, ETH_IPV4) + packet)]
        mac = self.arp.get(nexthop)
        if mac is not None:
            self._counters["tx-ip"] += 1
            return [(ifindex, self._eth(st, mac, ETH_IPV4) + packet)]
        key = (ifindex, nexthop)
        queue = self._pending.get(key)
        fresh = queue is None
        if queue is None:
            queue = self._pending[key] = deque()
        if len(queue) >= PENDING_PER_HOP:
            queue.popleft()
            self._counters["arp-pending-overflow"] += 1
        queue.append(packet)
        return [self.arp_request(ifindex, nexthop)] if fresh else []

    def arp_request(self, ifindex: int, target: bytes) -> Tx:
        """An ARP who-has `target` (4 bytes) broadcast on `ifindex`."""
        st = self._if[ifindex]
        sender = st.ip or b"\0\0\0\0"
        body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IPV4, 6, 4, 1, st.mac, sender,
                           b"\0" * 6, target)
        self._counters["tx-arp-request"] += 1
        return ifindex, self._eth(st, BROADCAST, ETH_ARP) + body

    def retry_arp(self, dst: ipaddress.IPv4Address | None = None) -> list[Tx]:
        """Re-send the ARP request for the next hop toward `dst` if packets still wait for it
        (for every such next hop when `dst` is None)."""
        if dst is None:
            return [self.arp_request(ifindex, hop) for (ifindex, hop) in self._pending]
        route = self.route(dst)
        if route is None or (route[0], route[1].packed) not in self._pending:
            return []
        return [self.arp_request(route[0], route[1].packed)]

    def give_up(self, dst: ipaddress.IPv4Address) -> int:
        """The next hop toward `dst` did not answer: drop the packets waiting for it (counted
        as `arp-unresolved-drop`, Linux's unresolved_discards) so that the next packet starts a
        new resolution with a fresh ARP request, as Linux does for a FAILED neighbour.
        Returns how many were dropped."""
        route = self.route(dst)
        if route is None:
            return 0
        queue = self._pending.pop((route[0], route[1].packed), None)
        if not queue:
            return 0
        self._counters["arp-unresolved-drop"] += len(queue)
        return len(queue)

    def _eth(self, st: _IfState, dst: bytes, ethertype: int) -> bytes:
        if st.vlan is None:
            return dst + st.mac + struct.pack("!H", ethertype)
        return dst + st.mac + struct.pack("!HHH", ETH_8021Q, st.vlan, ethertype)

    # --------------------------------------------------------------------------- receiving
    def receive_batch(self, ifindex: int, frames: Sequence[bytes],
                      start: int = 0) -> tuple[list[Tx], int]:
        """`receive` the frames from `frames[start]` on, up to and including the first that
        has something to send or puts something in `inbox`: (what it sends, the index to go on
        from). Someone else's ARP requests, the bulk of a busy L2 domain, are decided in this
        loop."""
        st = self._if[ifindex]
        fast = st.vlan is None
        my_ip = st.ip
        arp = self.arp
        ignored = 0
        i = start
        n = len(frames)
        try:
            while i < n:
                frame = frames[i]
                i += 1
                if (fast and frame[12:22] == _ARP_REQUEST_HDR and len(frame) >= 42
                        and frame[38:42] != my_ip and frame[28:32] not in arp):
                    ignored += 1  # receive's first test (RFC 826), inlined
                    continue
                txs = self.receive(ifindex, frame)
                if txs or self.inbox:
                    return txs, i
            return [], i
        finally:
            self._arp_not_for_me += ignored

    def receive(self, ifindex: int, frame: bytes) -> list[Tx]:
        """Handle one frame that arrived on `ifindex`; return the frames to send in answer."""
        st = self._if[ifindex]
        if (frame[12:22] == _ARP_REQUEST_HDR and st.vlan is None and len(frame) >= 42
                and frame[38:42] != st.ip):
            # The most common frame in a busy L2 domain: somebody else's broadcast ARP request.
            # RFC 826 ("Packet Reception"): a request not for us only refreshes the sender's
            # entry if we have one, and otherwise changes nothing — so it is decided here,
            # before any unpacking, and counted.
            spa = frame[28:32]
            arp = self.arp
            if spa not in arp:
                self._arp_not_for_me += 1
                return []
            sha = frame[22:28]
            arp[spa] = sha
            pending = self._pending
            if pending and (ifindex, spa) in pending:
                return self._flush_pending(ifindex, spa, sha)
            return []
        if len(frame) < 14:
            self._counters["rx-runt"] += 1
            return []
        dst = frame[:6]
        if dst != st.mac and not dst[0] & 1:
            self._counters["rx-not-for-me"] += 1
            return []
        (ethertype,) = struct.unpack_from("!H", frame, 12)
        off = 14
        if ethertype == ETH_8021Q:
            if len(frame) < 18:
                self._counters["rx-runt"] += 1
                return []
            tci, ethertype = struct.unpack_from("!HH", frame, 14)
            vid = tci & 0x0FFF
            off = 18
            if vid != (st.vlan or 0):
                self._counters["rx-wrong-vlan"] += 1
                return []
        elif st.vlan is not None:
            self._counters["rx-wrong-vlan"] += 1
            return []
        if ethertype == ETH_ARP:
            return self._arp_in(ifindex, st, frame, off)
        if ethertype == ETH_IPV4:
            return self._ip_in(ifindex, st, frame, off)
        self._counters["rx-other-ethertype"] += 1
        return []

    def _arp_in(self, ifindex: int, st: _IfState, frame: bytes, off: int) -> list[Tx]:
        if len(frame) < off + 28:
            self._counters["rx-runt"] += 1
            return []
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = struct.unpack_from(
            "!HHBBH6s4s6s4s", frame, off)
        if (htype, ptype, hlen, plen) != (1, ETH_IPV4, 6, 4):
            self._counters["rx-arp-unsupported"] += 1
            return []
        out: list[Tx] = []
        if spa != b"\0\0\0\0" and (spa in self.arp or tpa == st.ip):
            self.arp[spa] = sha  # RFC 826: update if known, learn if the request is for us
            out.extend(self._flush_pending(ifindex, spa, sha))
        if op == 1 and st.ip is not None and tpa == st.ip:
            body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IPV4, 6, 4, 2, st.mac, st.ip, sha, spa)
            self._counters["tx-arp-reply"] += 1
            out.append((ifindex, self._eth(st, sha, ETH_ARP) + body))
        elif op == 2:
            self._counters["rx-arp-reply"] += 1
        return out

    def _flush_pending(self, ifindex: int, ip: bytes, mac: bytes) -> list[Tx]:
        queue = self._pending.pop((ifindex, ip), None)
        if not queue:
            return []
        eth = self._eth(self._if[ifindex], mac, ETH_IPV4)
        self._counters["tx-ip"] += len(queue)
        return [(ifindex, eth + p) for p in queue]

    def _ip_in(self, ifindex: int, st: _IfState, frame: bytes, off: int) -> list[Tx]:
        if len(frame) < off + 20:
            self._counters["rx-runt"] += 1
            return []
        vihl = frame[off]
        ihl = (vihl & 0x0F) * 4
        (total,) = struct.unpack_from("!H", frame, off + 2)
        if vihl >> 4 != 4 or ihl < 20 or total < ihl or len(frame) < off + total:
            self._counters["rx-bad-ip"] += 1
            return []
        header = frame[off:off + ihl]
        if inet_checksum(header) != 0:
            self._counters["rx-bad-checksum"] += 1
            return []
        ttl, proto = header[8], header[9]
        src, dst = header[12:16], header[16:20]
        payload = frame[off + ihl:off + total]
        if dst in self._my_ips or dst == b"\xff\xff\xff\xff" or (
                st.net is not None and dst == st.net.broadcast_address.packed):
            return self._deliver(ifindex, src, ttl, proto, payload, header)
        if not self.router:
            self._counters["rx-not-for-me"] += 1
            return []
        return self._forward(ifindex, frame[off:off + total], ihl)

    def _deliver(self, ifindex: int, src: bytes, ttl: int, proto: int, payload: bytes,
                 header: bytes) -> list[Tx]:
        src_ip = ipaddress.IPv4Address(src)
        if proto == PROTO_ICMP and len(payload) >= 8:
            if inet_checksum(payload) != 0:
                self._counters["rx-bad-checksum"] += 1
                return []
            icmp_type, code = payload[0], payload[1]
            if icmp_type == ICMP_ECHO_REQUEST:
                self._counters["rx-echo-request"] += 1
                reply = icmp_message(ICMP_ECHO_REPLY, 0, payload[4:8], payload[8:])
                return self._send_ip(src_ip, PROTO_ICMP, reply, ttl=64)
            if icmp_type == ICMP_ECHO_REPLY:
                ident, seq = struct.unpack_from("!HH", payload, 4)
                self._counters["rx-echo-reply"] += 1
                self.inbox.append(Received("echo-reply", ifindex, src_ip, ident, seq,
                                           payload[8:], ttl))
                return []
            self._counters["rx-icmp-error"] += 1
            self.inbox.append(Received("icmp-error", ifindex, src_ip, icmp_type, code,
                                       payload[8:], ttl))
            return []
        if proto == PROTO_UDP and len(payload) >= 8:
            sport, dport, _length, _csum = struct.unpack_from("!HHHH", payload)
            self._counters["rx-udp"] += 1
            self.inbox.append(Received("udp", ifindex, src_ip, sport, dport, payload[8:], ttl))
            return []
        self._counters["rx-unhandled-proto"] += 1
        return []

    def _forward(self, in_if: int, packet: bytes, ihl: int) -> list[Tx]:
        ttl = packet[8]
        src = ipaddress.IPv4Address(packet[12:16])
        dst = ipaddress.IPv4Address(packet[16:20])
        if ttl <= 1:
            self._counters["fwd-ttl-exceeded"] += 1
            msg = icmp_message(ICMP_TIME_EXCEEDED, 0, b"\0\0\0\0", packet[:ihl + 8])
            return self._send_ip(src, PROTO_ICMP, msg, ttl=64)
        hop = self.route(dst)
        if hop is None:
            self._counters["fwd-no-route"] += 1
            return []
        out_if, nexthop = hop
        header = bytearray(packet[:ihl])
        header[8] = ttl - 1
        header[10:12] = b"\0\0"
        header[10:12] = struct.pack("!H", inet_checksum(bytes(header)))
        self._counters["fwd"] += 1
        return self._output(out_if, nexthop.packed, bytes(header) + packet[ihl:])
