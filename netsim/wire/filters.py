"""A tcpdump-like filter language for expectations, evaluated on raw frame bytes (pure codec).

    vlan 10 and udp dst port 53
    ether src 00:16:3e:00:00:01 and not broadcast
    untagged and (arp or icmp) and host 10.0.0.2

Primitives (combine with `and`, `or`, `not`, parentheses; `&&`, `||`, `!` also work):

| primitive                                  | true when                                    |
|--------------------------------------------|----------------------------------------------|
| `ether src|dst|host MAC`, `src|dst MAC`     | Ethernet source / destination / either is MAC |
| `broadcast`, `multicast`                   | dst is ff:ff:ff:ff:ff:ff / has the group bit |
| `vlan`, `vlan N`                           | the frame carries a tag / its outer VID is N |
| `untagged`, `tagged`                       | no 802.1Q/802.1ad tag / at least one         |
| `ether proto N`, `ethertype N`             | the (inner) ethertype is N                   |
| `arp`, `ip`, `ipv6`                        | ethertype 0x0806 / 0x0800 / 0x86dd           |
| `host A`, `src host A`, `dst host A`, `src A`, `dst A` | IPv4 (or ARP sender/target) address |
| `udp`, `tcp`, `icmp`, `ip proto N`         | the IPv4 protocol                            |
| `port N`, `src port N`, `dst port N`       | a UDP/TCP port                               |
| `len >= N`, `len <= N`, `len = N`          | the frame length                             |

`compile_filter(text)` returns a `Filter` (callable on bytes); bad text raises `FilterError` naming
the word and its position. Frames are decoded with `struct` once per call, never through Scapy.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import NamedTuple

from netsim.errors import NetsimError
from netsim.wire.framespec import SpecError, mac_bytes

TPIDS = (0x8100, 0x88A8, 0x9100)


class FilterError(NetsimError):
    """A filter expression that does not parse."""


class Decoded(NamedTuple):
    """The fields of a frame a filter can test."""

    dst: bytes
    src: bytes
    vids: tuple[int, ...]
    ethertype: int
    ip_src: bytes | None = None
    ip_dst: bytes | None = None
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None
    length: int = 0


# Hand-indexed rather than struct.unpack_from: this runs once per frame an expectation watches,
# and the replay benchmark spends its time here otherwise.
def decode(frame: bytes) -> Decoded | None:
    """Decode the header fields of `frame`; None for a runt (shorter than 14 bytes)."""
    n = len(frame)
    if n < 14:
        return None
    etype = (frame[12] << 8) | frame[13]
    off = 14
    vids: tuple[int, ...] = ()
    if etype in TPIDS:
        tags = []
        while etype in TPIDS and off + 4 <= n:
            tags.append(((frame[off] << 8) | frame[off + 1]) & 0x0FFF)
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
        vids = tuple(tags)
    if etype == 0x0800 and off + 20 <= n:
        proto = frame[off + 9]
        l4 = off + (frame[off] & 0x0F) * 4
        sport = dport = None
        if proto in (6, 17) and not (((frame[off + 6] & 0x1F) << 8) | frame[off + 7]) \
                and l4 + 4 <= n:
            sport = (frame[l4] << 8) | frame[l4 + 1]
            dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
        return Decoded(frame[0:6], frame[6:12], vids, etype, frame[off + 12:off + 16],
                       frame[off + 16:off + 20], proto, sport, dport, n)
    if etype == 0x0806 and off + 28 <= n:
        return Decoded(frame[0:6], frame[6:12], vids, etype, frame[off + 14:off + 18],
                       frame[off + 24:off + 28], None, None, None, n)
    return Decoded(frame[0:6], frame[6:12], vids, etype, None, None, None, None, None, n)


Pred = Callable[[Decoded], bool]


class Filter:
    """A compiled filter: `flt(frame_bytes) -> bool`; `str(flt)` is its source text."""

    def __init__(self, text: str, pred: Pred) -> None:
        self.text = text
        self._pred = pred

    def __call__(self, frame: bytes) -> bool:
        d = decode(frame)
        return d is not None and self._pred(d)

    def match_decoded(self, d: Decoded) -> bool:
        """Test already-decoded fields."""
        return self._pred(d)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Filter({self.text!r})"


_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|>=|<=|=|[^\s()!=<>]+)")
_PROTOS = {"udp": 17, "tcp": 6, "icmp": 1}
_ETHERS = {"arp": 0x0806, "ip": 0x0800, "ipv6": 0x86DD}


def compile_filter(text: str) -> Filter:
    """Parse `text` (see the module docstring) into a `Filter`; `""` matches every frame."""
    tokens: list[tuple[str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or not m.group(1):
            if text[pos:].strip() == "":
                break
            raise FilterError(f"filter {text!r}: cannot read at position {pos}")
        tokens.append((m.group(1), m.start(1)))
        pos = m.end()
    if not tokens:
        return Filter(text, lambda d: True)
    parser = _Parser(text, tokens)
    pred = parser.parse_or()
    if parser.i < len(tokens):
        word, at = tokens[parser.i]
        raise FilterError(f"filter {text!r}: unexpected {word!r} at position {at}")
    return Filter(text, pred)


#: how deep `not` and parentheses may nest in a filter
MAX_DEPTH = 64


class _Parser:
    def __init__(self, text: str, tokens: list[tuple[str, int]]) -> None:
        self.text = text
        self.tokens = tokens
        self.i = 0

    def error(self, message: str) -> FilterError:
        if self.i < len(self.tokens):
            word, at = self.tokens[self.i]
            return FilterError(f"filter {self.text!r}: {message} at {word!r} (position {at})")
        return FilterError(f"filter {self.text!r}: {message} at the end")

    def peek(self) -> str | None:
        return self.tokens[self.i][0].lower() if self.i < len(self.tokens) else None

    def take(self) -> str:
        if self.i >= len(self.tokens):
            raise self.error("expression ends too early")
        word = self.tokens[self.i][0]
        self.i += 1
        return word

    # Chains of `and`/`or` become one flat any()/all() (not nested closures, whose depth a long
    # filter would push past Python's recursion limit when matching each frame); `not` and
    # parentheses nest at most MAX_DEPTH deep.
    depth = 0

    def parse_or(self) -> Pred:
        terms = [self.parse_and()]
        while self.peek() in ("or", "||"):
            self.i += 1
            terms.append(self.parse_and())
        if len(terms) == 1:
            return terms[0]
        return lambda d: any(t(d) for t in terms)

    def parse_and(self) -> Pred:
        terms = [self.parse_not()]
        while True:
            word = self.peek()
            if word in ("and", "&&"):
                self.i += 1
            elif word is None or word in ("or", "||", ")"):
                break
            # juxtaposition (`udp dst port 53`) is an implicit `and`, as in tcpdump
            terms.append(self.parse_not())
        if len(terms) == 1:
            return terms[0]
        return lambda d: all(t(d) for t in terms)

    def parse_not(self) -> Pred:
        if self.peek() in ("not", "!", "("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"nesting deeper than {MAX_DEPTH} levels")
            try:
                return self._nested()
            finally:
                self.depth -= 1
        return self.primitive()

    def _nested(self) -> Pred:
        if self.peek() in ("not", "!"):
            self.i += 1
            inner = self.parse_not()
            return lambda d: not inner(d)
        self.i += 1  # "("
        inner = self.parse_or()
        if self.peek() != ")":
            raise self.error("missing ')'")
        self.i += 1
        return inner

    # -- primitives -------------------------------------------------------------------------------
    def number(self, lo: int, hi: int) -> int:
        word = self.take()
        try:
            value = int(word, 0)
        except ValueError:
            self.i -= 1
            raise self.error("expected a number") from None
        if not lo <= value <= hi:
            self.i -= 1
            raise self.error(f"number out of range {lo}..{hi}")
        return value

    def mac(self) -> bytes:
        word = self.take()
        try:
            return mac_bytes(word)
        except SpecError:
            self.i -= 1
            raise self.error("expected a MAC address") from None

    def ip(self) -> bytes:
        word = self.take()
        try:
            return ipaddress.IPv4Address(word).packed
        except ValueError:
            self.i -= 1
            raise self.error("expected an IPv4 address") from None

    def primitive(self) -> Pred:
        word = self.peek()
        if word is None:
            raise self.error("expression ends too early")
        self.i += 1
        if word == "ether":
            kind = (self.peek() or "")
            self.i += 1
            if kind in ("src", "dst", "host"):
                return self._mac_pred(kind, self.mac())
            if kind in ("proto", "type"):
                value = self.number(0, 0xFFFF)
                return lambda d: d.ethertype == value
            self.i -= 1
            raise self.error("expected src, dst, host or proto after 'ether'")
        if word == "ethertype":
            value = self.number(0, 0xFFFF)
            return lambda d: d.ethertype == value
        if word in ("src", "dst"):
            nxt = self.peek()
            if nxt == "host":
                self.i += 1
                return self._ip_pred(word, self.ip())
            if nxt == "port":
                self.i += 1
                return self._port_pred(word, self.number(0, 0xFFFF))
            if nxt is not None and ":" in nxt:
                return self._mac_pred(word, self.mac())
            return self._ip_pred(word, self.ip())
        if word == "host":
            return self._ip_pred("host", self.ip())
        if word == "port":
            return self._port_pred("port", self.number(0, 0xFFFF))
        if word == "vlan":
            nxt = self.peek()
            if nxt is not None and nxt[:1].isdigit():
                vid = self.number(0, 4095)
                return lambda d: bool(d.vids) and d.vids[0] == vid
            return lambda d: bool(d.vids)
        if word == "tagged":
            return lambda d: bool(d.vids)
        if word == "untagged":
            return lambda d: not d.vids
        if word == "broadcast":
            return lambda d: d.dst == b"\xff" * 6
        if word == "multicast":
            return lambda d: bool(d.dst[0] & 1)
        if word in _ETHERS:
            et = _ETHERS[word]
            if word == "ip" and self.peek() == "proto":
                self.i += 1
                proto = self.number(0, 255)
                return lambda d: d.ethertype == 0x0800 and d.proto == proto
            return lambda d: d.ethertype == et
        if word in _PROTOS:
            pr = _PROTOS[word]
            return lambda d: d.ethertype == 0x0800 and d.proto == pr
        if word == "len":
            op = self.take()
            n = self.number(0, 1 << 20)
            ops: dict[str, Pred] = {
                ">=": lambda d: d.length >= n, "<=": lambda d: d.length <= n,
                "=": lambda d: d.length == n}
            if op not in ops:
                self.i -= 2
                raise self.error("expected >=, <= or = after 'len'")
            return ops[op]
        self.i -= 1
        raise self.error("unknown word")

    @staticmethod
    def _mac_pred(kind: str, mac: bytes) -> Pred:
        if kind == "src":
            return lambda d: d.src == mac
        if kind == "dst":
            return lambda d: d.dst == mac
        return lambda d: d.src == mac or d.dst == mac

    @staticmethod
    def _ip_pred(kind: str, ip: bytes) -> Pred:
        if kind == "src":
            return lambda d: d.ip_src == ip
        if kind == "dst":
            return lambda d: d.ip_dst == ip
        return lambda d: d.ip_src == ip or d.ip_dst == ip

    @staticmethod
    def _port_pred(kind: str, port: int) -> Pred:
        if kind == "src":
            return lambda d: d.sport == port
        if kind == "dst":
            return lambda d: d.dport == port
        return lambda d: d.sport == port or d.dport == port
