"""The guest stack on raw bytes: ARP, ICMP echo, UDP, and a router VM forwarding between nets."""
from __future__ import annotations

import ipaddress
import struct

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from netsim.dataplane.guest import Guest, Iface, Route, inet_checksum

A_MAC, B_MAC, R0_MAC, R1_MAC = (f"00:16:3e:00:00:0{i}" for i in range(1, 5))


def wire(guests: dict[str, Guest], links: dict[tuple[str, int], tuple[str, int]],
         first: list[tuple[str, int, bytes]], limit: int = 100) -> list[bytes]:
    """Deliver frames point to point until quiet; return every frame that crossed a wire."""
    seen = []
    queue = list(first)
    while queue and limit:
        limit -= 1
        name, ifindex, frame = queue.pop(0)
        seen.append(frame)
        peer, pif = links[(name, ifindex)]
        queue.extend((peer, i, f) for i, f in guests[peer].receive(pif, frame))
    return seen


def pair() -> tuple[Guest, Guest]:
    a = Guest("a", [Iface(A_MAC, ipaddress.IPv4Interface("10.0.0.1/24"))])
    b = Guest("b", [Iface(B_MAC, ipaddress.IPv4Interface("10.0.0.2/24"))])
    return a, b


def test_ping_resolves_arp_then_gets_a_reply() -> None:
    a, b = pair()
    out = a.ping("10.0.0.2", ident=7, seq=1)
    assert len(out) == 1
    arp = Ether(out[0][1])
    assert arp[Ether].dst == "ff:ff:ff:ff:ff:ff" and arp[ARP].op == 1
    assert arp[ARP].pdst == "10.0.0.2" and arp[ARP].hwsrc == A_MAC
    frames = wire({"a": a, "b": b}, {("a", 0): ("b", 0), ("b", 0): ("a", 0)},
                  [("a", 0, out[0][1])])
    kinds = [Ether(f).lastlayer().name for f in frames]
    assert len(frames) == 4, kinds  # who-has, is-at, echo request, echo reply
    request, reply = Ether(frames[2]), Ether(frames[3])
    assert request[ICMP].type == 8 and reply[ICMP].type == 0
    assert request[IP].chksum == IP(bytes(request[IP])).chksum  # our checksum is scapy's
    assert reply[Ether].dst == A_MAC and reply[IP].dst == "10.0.0.1"
    (got,) = a.inbox
    assert (got.kind, str(got.src), got.ident, got.seq) == ("echo-reply", "10.0.0.2", 7, 1)
    assert a.arp[bytes([10, 0, 0, 2])] == bytes.fromhex(B_MAC.replace(":", ""))
    # second ping: ARP cached, one frame straight away
    assert len(a.ping("10.0.0.2", seq=2)) == 1


def test_udp_datagram_is_delivered_with_a_valid_checksum() -> None:
    a, b = pair()
    a.arp[bytes([10, 0, 0, 2])] = bytes.fromhex(B_MAC.replace(":", ""))
    ((_, frame),) = a.send_udp("10.0.0.2", 5000, 53, b"hello")
    pkt = Ether(frame)
    assert pkt[UDP].chksum != 0
    # scapy recomputes the checksum from scratch on a copy with chksum cleared
    pkt2 = Ether(frame)
    del pkt2[UDP].chksum
    del pkt2[IP].chksum
    assert Ether(bytes(pkt2))[UDP].chksum == pkt[UDP].chksum
    assert b.receive(0, frame) == []
    (got,) = b.inbox
    assert (got.kind, got.ident, got.seq, got.payload) == ("udp", 5000, 53, b"hello")


def test_frames_for_others_and_garbage_are_counted_not_answered() -> None:
    _, b = pair()
    other = bytes.fromhex("00163e7f0000") + bytes.fromhex(A_MAC.replace(":", "")) + b"\x08\x00"
    assert b.receive(0, other + b"\0" * 40) == []
    assert b.receive(0, b"\x01\x02") == []
    bad_ip = bytearray(bytes(Ether(dst=B_MAC, src=A_MAC) /
                             IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()))
    bad_ip[24] ^= 0xFF  # corrupt the header checksum
    assert b.receive(0, bytes(bad_ip)) == []
    assert b.counters["rx-not-for-me"] == 1
    assert b.counters["rx-runt"] == 1
    assert b.counters["rx-bad-checksum"] == 1


def test_vgt_guest_tags_and_ignores_other_vlans() -> None:
    g = Guest("t", [Iface(A_MAC, ipaddress.IPv4Interface("10.0.0.1/24"), vlan=30)])
    ((_, frame),) = g.ping("10.0.0.2")
    assert struct.unpack_from("!HH", frame, 12) == (0x8100, 30)
    req = Ether(dst="ff:ff:ff:ff:ff:ff", src=B_MAC) / ARP(op=1, hwsrc=B_MAC, psrc="10.0.0.2",
                                                           pdst="10.0.0.1")
    assert g.receive(0, bytes(req)) == []  # untagged: not our VLAN
    tagged = Ether(dst="ff:ff:ff:ff:ff:ff", src=B_MAC) / Dot1Q(vlan=30) / req[ARP]
    out = [Ether(f) for _, f in g.receive(0, bytes(tagged))]
    # the ARP reply, and the ping that was waiting for 10.0.0.2's MAC: both tagged 30
    assert sorted(p.lastlayer().name for p in out) == ["ARP", "Raw"]
    assert all(p[Dot1Q].vlan == 30 for p in out)
    assert next(p for p in out if ARP in p)[ARP].op == 2


def test_router_forwards_between_two_private_networks() -> None:
    a = Guest("a", [Iface(A_MAC, ipaddress.IPv4Interface("172.16.1.10/24"))],
              gateway=ipaddress.IPv4Address("172.16.1.1"))
    b = Guest("b", [Iface(B_MAC, ipaddress.IPv4Interface("172.16.2.10/24"))],
              gateway=ipaddress.IPv4Address("172.16.2.1"))
    r = Guest("r", [Iface(R0_MAC, ipaddress.IPv4Interface("172.16.1.1/24")),
                    Iface(R1_MAC, ipaddress.IPv4Interface("172.16.2.1/24"))], router=True)
    guests = {"a": a, "b": b, "r": r}
    links = {("a", 0): ("r", 0), ("r", 0): ("a", 0), ("b", 0): ("r", 1), ("r", 1): ("b", 0)}
    ((_, first),) = a.ping("172.16.2.10", seq=5)
    frames = wire(guests, links, [("a", 0, first)])
    (got,) = a.inbox
    assert (got.kind, str(got.src), got.seq) == ("echo-reply", "172.16.2.10", 5)
    assert got.ttl == 63  # one router hop
    assert r.counters["fwd"] == 2
    forwarded = [Ether(f) for f in frames if ICMP in Ether(f) and Ether(f)[IP].ttl == 63]
    assert forwarded and all(inet_checksum(bytes(p[IP])[:20]) == 0 for p in forwarded)


def test_router_static_route_and_ttl_exceeded() -> None:
    r = Guest("r", [Iface(R0_MAC, ipaddress.IPv4Interface("10.1.0.1/24")),
                    Iface(R1_MAC, ipaddress.IPv4Interface("10.2.0.1/24"))], router=True,
              routes=[Route(ipaddress.IPv4Network("10.9.0.0/16"),
                            ipaddress.IPv4Address("10.2.0.254"))])
    assert r.route(ipaddress.IPv4Address("10.9.3.4")) == (1, ipaddress.IPv4Address("10.2.0.254"))
    assert r.route(ipaddress.IPv4Address("8.8.8.8")) is None
    r.arp[bytes([10, 1, 0, 5])] = bytes.fromhex(A_MAC.replace(":", ""))
    pkt = Ether(dst=R0_MAC, src=A_MAC) / IP(src="10.1.0.5", dst="10.9.1.1", ttl=1) / ICMP()
    ((ifindex, frame),) = r.receive(0, bytes(pkt))
    err = Ether(frame)
    assert ifindex == 0 and err[ICMP].type == 11 and err[IP].dst == "10.1.0.5"
    assert r.counters["fwd-ttl-exceeded"] == 1


def test_non_router_does_not_forward() -> None:
    g = Guest("g", [Iface(R0_MAC, ipaddress.IPv4Interface("10.1.0.1/24")),
                    Iface(R1_MAC, ipaddress.IPv4Interface("10.2.0.1/24"))])
    pkt = Ether(dst=R0_MAC, src=A_MAC) / IP(src="10.1.0.5", dst="10.2.0.9") / ICMP()
    assert g.receive(0, bytes(pkt)) == []
    assert g.counters["rx-not-for-me"] == 1


def test_arp_requests_for_others_are_counted_and_change_nothing_unless_the_sender_is_known(
) -> None:
    _, b = pair()
    c_mac = "00:16:3e:00:00:0c"
    # scapy builds it, so the fast path is checked against real ARP bytes (RFC 826)
    who_has = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=c_mac) /
                    ARP(op=1, hwsrc=c_mac, psrc="10.0.0.3", pdst="10.0.0.9"))
    assert b.receive(0, who_has) == []
    assert b.arp == {} and b.counters["rx-arp-not-for-me"] == 1
    b.counters.clear()
    assert b.counters["rx-arp-not-for-me"] == 0
    # a sender b already knows: its entry is refreshed from the request (RFC 826 merge)
    b.arp[bytes([10, 0, 0, 3])] = b"\x00" * 6
    assert b.receive(0, who_has) == []
    assert b.arp[bytes([10, 0, 0, 3])] == bytes.fromhex(c_mac.replace(":", ""))
    # a request for b is answered and teaches b the sender
    for_b = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=A_MAC) /
                  ARP(op=1, hwsrc=A_MAC, psrc="10.0.0.1", pdst="10.0.0.2"))
    ((_, reply),) = b.receive(0, for_b)
    assert Ether(reply)[ARP].op == 2 and bytes([10, 0, 0, 1]) in b.arp
    assert b.counters["rx-arp-not-for-me"] == 0
