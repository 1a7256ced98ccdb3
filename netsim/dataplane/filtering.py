"""vDS traffic filtering and marking: ordered rules that drop, accept or re-tag frames crossing a
distributed port (vSphere `DvsTrafficRuleset` / `DvsTrafficRule`).

As vSphere applies them (vSphere Networking, "Traffic Filtering and Marking"): the rules of a
port group sit on the path between the VM's network adapter and its distributed port; they are
evaluated in `sequence` order and the first rule that matches decides (later rules are not
looked at). A rule matches when its direction covers the frame's (`incomingPackets` = into the
switch from the VM, `outgoingPackets` = from the switch to the VM, `both`) and every one of its
qualifiers matches (AND):

- MAC qualifier (`DvsMacNetworkRuleQualifier`): source / destination MAC (one address, or an
  address with a mask, `MacRange`), next-level protocol (ethertype) and VLAN ID. On a VM port
  the VLAN ID is the guest's own tag, so it matches only on a VGT (4095) port group — as vSphere
  says, "to match traffic to VLAN ID if VST is active, use a rule on an uplink port group".
- IP qualifier (`DvsIpNetworkRuleQualifier`): source / destination address or prefix (IPv4 or
  IPv6; a rule with addresses of one family never matches the other), protocol number, source
  / destination port or port range (TCP, UDP, SCTP; in IPv4 first fragments only), and TCP
  flags (`tcpFlags`, an `IntExpression`: the flags octet CWR ECE URG ACK PSH RST SYN FIN of
  RFC 3168 equals the value; hvsim also takes `value/mask` as Open vSwitch's `tcp_flags` field
  does (ovs-fields(7)), e.g. `0x02/0x12` = SYN without ACK). The vSphere 8.0U3 API reference
  adds "TCP flags are not supported by Traffic Filtering"; earlier ones list the field without
  that note, so a rule relying on it may not behave the same on a newer vCenter. For IPv6
  the protocol is the fixed header's next header: extension headers are not walked.
- System traffic qualifier (`DvsSystemTrafficNetworkRuleQualifier`): the infrastructure traffic
  type. Every port hvsim has is a VM's vNIC, so its frames are `virtualMachine` traffic; a rule
  for `vmotion`, `nfs`, ... matches none of them (hvsim has no VMkernel adapters).

Every value may be negated with a leading `!` (vSphere's `negate` flag). Actions: `drop`
(`DvsDropNetworkRuleAction`: counted as `filtered`), `accept` (`DvsAcceptNetworkRuleAction`) and
`tag` (`DvsUpdateTagNetworkRuleAction`: `dscp` 0-63 and/or `cos` 0-7). A DSCP mark rewrites the
IPv4 TOS / IPv6 traffic class (ECN bits kept) and updates the IPv4 header checksum
incrementally, as Open vSwitch's `mod_nw_tos` does (RFC 1624); TCP/UDP checksums stay valid
because neither pseudo-header covers the DSCP field. A CoS mark sets the 802.1p priority the
frame carries when it leaves tagged. `punt` is not modelled.

Matching is compiled, per port and direction, into closures over bytes, bucketed by ethertype
and IP protocol, so a frame is only tested against rules that could match it; no Scapy.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from netsim.errors import ConfigError

ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
_ETHERTYPES = {"ipv4": ETH_IPV4, "ip": ETH_IPV4, "ipv6": ETH_IPV6, "arp": ETH_ARP,
               "rarp": 0x8035, "lldp": 0x88CC, "lacp": 0x8809}
_PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "icmpv6": 58,
              "sctp": 132}
_PORT_PROTOS = frozenset({6, 17, 132})
MAX_RULES = 1024  # more than a vDS port group holds; bounds the work one document causes

#: vSphere's infrastructure traffic classes (DistributedVirtualSwitchHostInfrastructureTrafficClass)
SYSTEM_TRAFFIC = ("management", "faultTolerance", "vmotion", "virtualMachine", "iSCSI", "nfs",
                  "hbr", "vsan", "vdp", "backupNfc", "nvmetcp")


class Direction(StrEnum):
    """Which way a rule looks (`DvsNetworkRuleDirectionType`)."""

    INCOMING = "incomingPackets"  # into the switch from the VM (vSphere "ingress")
    OUTGOING = "outgoingPackets"  # from the switch to the VM (vSphere "egress")
    BOTH = "both"


class RuleAction(StrEnum):
    """What a matching rule does."""

    ACCEPT = "accept"
    DROP = "drop"
    TAG = "tag"


# -- value parsing (shared by the qualifiers) ------------------------------------------------
def _neg(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str) and value.startswith("!"):
        return value[1:].strip(), True
    return value, False


def _int_in(value: Any, what: str, lo: int, hi: int, names: dict[str, int] | None = None) -> int:
    if isinstance(value, str):
        v = value.strip().lower()
        if names and v in names:
            return names[v]
        try:
            value = int(v, 0)
        except ValueError:
            known = f" or one of {', '.join(sorted(names))}" if names else ""
            raise ConfigError(f"{what}: {value!r} is not a number{known}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{what}: {value!r} must be {lo}-{hi}")
    return value


def _mac(value: Any, what: str) -> tuple[int, int]:
    """(address, mask) as 48-bit ints from `aa:bb:cc:dd:ee:ff[/mask]`."""
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected a MAC address, got {value!r}")
    addr, _, mask = value.partition("/")

    def one(s: str) -> int:
        parts = s.strip().replace("-", ":").split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise ConfigError(f"{what}: {s!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        try:
            return int("".join(parts), 16)
        except ValueError:
            raise ConfigError(f"{what}: {s!r} is not a MAC address") from None

    m = one(mask) if mask else (1 << 48) - 1
    return one(addr) & m, m


def _ports(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, str) and "-" in value:
        a, _, b = value.partition("-")
        lo, hi = _int_in(a, what, 0, 65535), _int_in(b, what, 0, 65535)
        if lo > hi:
            raise ConfigError(f"{what}: port range {value!r} runs backwards (low-high)")
        return lo, hi
    p = _int_in(value, what, 0, 65535)
    return p, p


def _tcp_flags(value: Any, what: str) -> tuple[int, int]:
    """(value, mask) of a TCP flags match: `0x12` (exactly SYN+ACK) or `0x02/0x12`."""
    if isinstance(value, str) and "/" in value:
        v, _, m = value.partition("/")
        val, mask = _int_in(v, what, 0, 255), _int_in(m, what, 0, 255)
        if val & ~mask:
            raise ConfigError(f"{what}: {value!r} sets flags outside its mask")
        return val, mask
    return _int_in(value, what, 0, 255), 0xFF


def _net(value: Any, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not an IP address or prefix") from None


# -- qualifiers ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MacQualifier:
    """Layer 2 match (`DvsMacNetworkRuleQualifier`); None = any. Values may start with `!`.

    src / dst: `00:16:3e:00:00:01` or `00:16:3e:00:00:00/ff:ff:ff:00:00:00`; protocol: the
    ethertype (`0x0800`, `ipv4`, `arp`, `ipv6`, ...); vlan: the guest's VLAN tag (VGT)."""

    src: str | None = None
    dst: str | None = None
    protocol: int | str | None = None
    vlan: int | str | None = None

    def __post_init__(self) -> None:
        for name in ("src", "dst"):
            v = getattr(self, name)
            if v is not None:
                _mac(_neg(v)[0], f"mac.{name}")
        if self.protocol is not None:
            _int_in(_neg(self.protocol)[0], "mac.protocol", 0x600, 0xFFFF, _ETHERTYPES)
        if self.vlan is not None:
            _int_in(_neg(self.vlan)[0], "mac.vlan", 0, 4094)

    def describe(self) -> str:
        """Short human form, e.g. `mac dst=ff:..., protocol=0x0806`."""
        parts = [f"{k}={v}" for k in ("src", "dst", "protocol", "vlan")
                 if (v := getattr(self, k)) is not None]
        return "mac " + ", ".join(parts) if parts else "mac any"


@dataclass(frozen=True, slots=True)
class IpQualifier:
    """Layer 3/4 match (`DvsIpNetworkRuleQualifier`); None = any. Values may start with `!`.

    src / dst: an address or prefix (`10.0.0.0/8`, `2001:db8::/32`); protocol: a number or
    `tcp`/`udp`/`icmp`/...; src_port / dst_port: a port or range `1024-65535` (TCP/UDP/SCTP).
    `version` (4 or 6) restricts the family when no address says it."""

    src: str | None = None
    dst: str | None = None
    protocol: int | str | None = None
    src_port: int | str | None = None
    dst_port: int | str | None = None
    version: int | None = None
    tcp_flags: int | str | None = None

    def __post_init__(self) -> None:
        fams = set()
        for name in ("src", "dst"):
            v = getattr(self, name)
            if v is not None:
                fams.add(_net(_neg(v)[0], f"ip.{name}").version)
        if self.version is not None:
            if self.version not in (4, 6):
                raise ConfigError(f"ip.version: {self.version!r} must be 4 or 6")
            fams.add(self.version)
        if len(fams) > 1:
            raise ConfigError("ip: source and destination (and version) mix IPv4 and IPv6")
        if self.protocol is not None:
            _int_in(_neg(self.protocol)[0], "ip.protocol", 0, 255, _PROTOCOLS)
        for name in ("src_port", "dst_port"):
            v = getattr(self, name)
            if v is not None:
                _ports(_neg(v)[0], f"ip.{name}")
                proto = self.protocol
                if proto is None or _neg(proto)[1] or \
                        _int_in(proto, "ip.protocol", 0, 255, _PROTOCOLS) not in _PORT_PROTOS:
                    raise ConfigError(f"ip.{name}: ports need protocol tcp, udp or sctp")
        if self.tcp_flags is not None:
            _tcp_flags(_neg(self.tcp_flags)[0], "ip.tcp_flags")
            proto = self.protocol
            if proto is None or _neg(proto)[1] or \
                    _int_in(proto, "ip.protocol", 0, 255, _PROTOCOLS) != 6:
                raise ConfigError("ip.tcp_flags: TCP flags need protocol tcp")

    @property
    def family(self) -> int | None:
        """4, 6, or None (either)."""
        for name in ("src", "dst"):
            v = getattr(self, name)
            if v is not None:
                return _net(_neg(v)[0], name).version
        return self.version

    def describe(self) -> str:
        """Short human form, e.g. `ip protocol=udp, dst_port=5060`."""
        parts = [f"{k}={v}" for k in ("src", "dst", "protocol", "src_port", "dst_port",
                                      "tcp_flags")
                 if (v := getattr(self, k)) is not None]
        return "ip " + ", ".join(parts) if parts else f"ip{self.version or ''} any"


@dataclass(frozen=True, slots=True)
class SystemTrafficQualifier:
    """Infrastructure traffic type (`DvsSystemTrafficNetworkRuleQualifier`), e.g.
    `virtualMachine`, `vmotion`, `!nfs`."""

    type: str

    def __post_init__(self) -> None:
        name, _ = _neg(self.type)
        if name not in SYSTEM_TRAFFIC:
            raise ConfigError(f"system_traffic: {self.type!r} is not one of "
                              f"{', '.join(SYSTEM_TRAFFIC)}")

    def describe(self) -> str:
        """Short human form."""
        return f"system traffic {self.type}"


Qualifier = MacQualifier | IpQualifier | SystemTrafficQualifier


@dataclass(frozen=True, slots=True)
class TrafficRule:
    """One rule (`DvsTrafficRule`): evaluated in `sequence` order, first match wins."""

    sequence: int
    action: RuleAction = RuleAction.DROP
    direction: Direction = Direction.BOTH
    qualifiers: tuple[Qualifier, ...] = ()
    description: str = ""
    dscp: int | None = None  # tag: DSCP 0-63 (`dscpTag`)
    cos: int | None = None  # tag: 802.1p priority 0-7 (`qosTag`)

    def __post_init__(self) -> None:
        what = f"traffic rule {self.sequence!r}"
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int) or \
                self.sequence < 0:
            raise ConfigError(f"{what}: sequence must be an integer >= 0")
        for name, enum in (("action", RuleAction), ("direction", Direction)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                ok = ", ".join(m.value for m in enum)
                raise ConfigError(f"{what}: {name} {getattr(self, name)!r} is not one of "
                                  f"{ok}") from None
        object.__setattr__(self, "qualifiers", tuple(self.qualifiers))
        for q in self.qualifiers:
            if not isinstance(q, MacQualifier | IpQualifier | SystemTrafficQualifier):
                raise ConfigError(f"{what}: {q!r} is not a qualifier")
        if self.dscp is not None:
            _int_in(self.dscp, f"{what}: dscp", 0, 63)
        if self.cos is not None:
            _int_in(self.cos, f"{what}: cos", 0, 7)
        if self.action is RuleAction.TAG and self.dscp is None and self.cos is None:
            raise ConfigError(f"{what}: a tag rule needs dscp and/or cos")
        if self.action is not RuleAction.TAG and (self.dscp is not None or self.cos is not None):
            raise ConfigError(f"{what}: dscp/cos only go with action tag")

    def describe(self) -> str:
        """`rule 10 "voice": tag dscp=46 (both; ip protocol=udp, dst_port=5060)`."""
        act = self.action.value
        if self.action is RuleAction.TAG:
            act += "".join(f" {k}={v}" for k in ("dscp", "cos")
                           if (v := getattr(self, k)) is not None)
        quals = "; ".join(q.describe() for q in self.qualifiers) or "any"
        name = f" {self.description!r}" if self.description else ""
        return f"rule {self.sequence}{name}: {act} ({self.direction.value}; {quals})"


@dataclass(frozen=True, slots=True)
class TrafficRuleset:
    """A port group's traffic filtering and marking policy (`DvsTrafficRuleset`)."""

    rules: tuple[TrafficRule, ...] = ()
    enabled: bool = True

    def __post_init__(self) -> None:
        if len(self.rules) > MAX_RULES:
            raise ConfigError(f"traffic rules: {len(self.rules)} rules, more than {MAX_RULES}")
        rules = tuple(sorted(self.rules, key=lambda r: r.sequence))
        seqs = [r.sequence for r in rules]
        dup = sorted({s for s in seqs if seqs.count(s) > 1})
        if dup:
            raise ConfigError(f"traffic rules: sequence number(s) {dup} used twice")
        object.__setattr__(self, "rules", rules)
        if not isinstance(self.enabled, bool):
            raise ConfigError("traffic rules: enabled must be true or false")

    def matcher(self, direction: Direction) -> RuleMatcher | None:
        """The compiled rules for frames going `direction` (INCOMING or OUTGOING), or None
        when none apply."""
        if not self.enabled:
            return None
        rules = [r for r in self.rules if r.direction in (direction, Direction.BOTH)]
        return RuleMatcher(rules) if rules else None


# -- compilation -----------------------------------------------------------------------------
# Each rule compiles to a list of conditions: Python expressions over the frame `f` (bytes at
# fixed offsets), the guest VLAN `v` and the L4 ports `sp`/`dp` (parsed once per frame, only
# in the buckets whose rules look at them); constants are ints or named `k0`, `k1`, ... in the
# generated function's namespace, so no configured text ever becomes code. One generated
# function per port and direction dispatches on the ethertype and IP protocol, tests only the
# rules that could match, in sequence order, and returns the first match's index (-1: none).
_PRELUDE = {
    # ports only in a first fragment with room for them
    "sp": "sp = (f[o] << 8) | f[o + 1] if has_l4 else -1",
    "dp": "dp = (f[o + 2] << 8) | f[o + 3] if has_l4 else -1",
    "tf": "tf = f[o + 13] if has_l4 and len(f) > o + 13 else -1",
}
_ADDR_AT = {("src", 4): 26, ("dst", 4): 30, ("src", 6): 22, ("dst", 6): 38}
_L4 = {
    ETH_IPV4: "o = 14 + (f[14] & 0x0F) * 4\n    has_l4 = len(f) >= o + 4 and not "
              "(f[20] & 0x1F or f[21])",
    ETH_IPV6: "o = 54\n    has_l4 = len(f) >= 58",
}


class _Gen:
    """Names constants for generated code."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {}

    def k(self, value: Any) -> str:
        name = f"k{len(self.ns)}"
        self.ns[name] = value
        return name


def _prefix_cond(at: int, size: int, value: int, plen: int, g: _Gen) -> str:
    """`f[at:at+size]` (a big-endian field) has its top `plen` bits equal to `value`'s: a
    byte-slice compare when the prefix is whole bytes, else a masked int over the bytes it
    covers."""
    nb = -(-plen // 8)
    if nb == 0:
        return "True"
    head = (value >> (8 * (size - nb))).to_bytes(nb, "big")
    if plen % 8 == 0 and nb <= 4:
        # byte by byte: most frames differ in the first byte and stop there, with no slice
        return " and ".join(f"f[{at + i}] == {b}" for i, b in enumerate(head))
    if plen % 8 == 0:
        return f"f[{at}:{at + nb}] == {g.k(head)}"
    mask = ((1 << plen) - 1) << (8 * nb - plen)
    want = int.from_bytes(head, "big") & mask
    return f"int.from_bytes(f[{at}:{at + nb}], 'big') & {g.k(mask)} == {g.k(want)}"


def _mac_conds(q: MacQualifier, g: _Gen) -> list[str]:
    conds = []
    for name, at in (("dst", 0), ("src", 6)):
        raw = getattr(q, name)
        if raw is None:
            continue
        val, neg = _neg(raw)
        addr, mask = _mac(val, name)
        plen = bin(mask).count("1")
        if mask == ((1 << plen) - 1) << (48 - plen):  # a prefix mask (ff:ff:ff:00:00:00)
            c = _prefix_cond(at, 6, addr, plen, g)
        else:
            c = f"int.from_bytes(f[{at}:{at + 6}], 'big') & {g.k(mask)} == {g.k(addr)}"
        conds.append(f"not ({c})" if neg else c)
    if q.vlan is not None:
        val, neg = _neg(q.vlan)
        c = f"v == {g.k(_int_in(val, 'vlan', 0, 4094))}"
        conds.append(f"not ({c})" if neg else c)
    return conds


def _ip_conds(q: IpQualifier, g: _Gen) -> list[str]:
    conds = []
    for name in ("src", "dst"):
        raw = getattr(q, name)
        if raw is None:
            continue
        val, neg = _neg(raw)
        net = _net(val, name)
        c = _prefix_cond(_ADDR_AT[(name, net.version)], net.max_prefixlen // 8,
                         int(net.network_address), net.prefixlen, g)
        conds.append(f"not ({c})" if neg else c)
    for name, var in (("src_port", "sp"), ("dst_port", "dp")):
        raw = getattr(q, name)
        if raw is None:
            continue
        val, neg = _neg(raw)
        lo, hi = _ports(val, name)
        c = f"{var} == {g.k(lo)}" if lo == hi else f"{g.k(lo)} <= {var} <= {g.k(hi)}"
        conds.append(f"not ({c})" if neg else c)
    if q.tcp_flags is not None:
        val, neg = _neg(q.tcp_flags)
        want, mask = _tcp_flags(val, "tcp_flags")
        c = f"tf == {g.k(want)}" if mask == 0xFF else \
            f"tf >= 0 and tf & {g.k(mask)} == {g.k(want)}"
        conds.append(f"not ({c})" if neg else c)
    return conds


@dataclass
class _Compiled:
    index: int
    rule: TrafficRule
    ethertypes: frozenset[int] | None  # None = any
    not_ethertypes: frozenset[int] = frozenset()
    protocols: frozenset[int] | None = None  # IP protocol numbers it can match; None = any
    not_protocols: frozenset[int] = frozenset()
    conds: tuple[str, ...] = ()
    never: bool = False
    ip: bool = False  # has an IP qualifier (needs a parsable IP header)


def _compile(index: int, rule: TrafficRule, g: _Gen) -> _Compiled:
    ets: set[int] | None = None
    not_ets: set[int] = set()
    protos: set[int] | None = None
    not_protos: set[int] = set()
    conds: list[str] = []
    never = False
    ip = False

    def only(s: set[int] | None, vals: Iterable[int]) -> set[int]:
        return set(vals) if s is None else s & set(vals)

    for q in rule.qualifiers:
        if isinstance(q, SystemTrafficQualifier):
            name, neg = _neg(q.type)
            # every hvsim port carries VM traffic (no VMkernel adapters)
            never |= (name == "virtualMachine") == neg
        elif isinstance(q, MacQualifier):
            if q.protocol is not None:
                val, neg = _neg(q.protocol)
                et = _int_in(val, "protocol", 0x600, 0xFFFF, _ETHERTYPES)
                if neg:
                    not_ets.add(et)
                else:
                    ets = only(ets, (et,))
            conds.extend(_mac_conds(q, g))
        else:
            ip = True
            fam = q.family
            ets = only(ets, (ETH_IPV4,) if fam == 4 else (ETH_IPV6,) if fam == 6
                       else (ETH_IPV4, ETH_IPV6))
            if q.protocol is not None:
                val, neg = _neg(q.protocol)
                pr = _int_in(val, "protocol", 0, 255, _PROTOCOLS)
                if neg:
                    not_protos.add(pr)
                else:
                    protos = only(protos, (pr,))
            conds.extend(_ip_conds(q, g))
    if ets is not None:
        ets -= not_ets
        never |= not ets
    if protos is not None:
        protos -= not_protos
        never |= not protos
    return _Compiled(index, rule, frozenset(ets) if ets is not None else None,
                     frozenset(not_ets), frozenset(protos) if protos is not None else None,
                     frozenset(not_protos), tuple(conds), never, ip)


def _body(cs: list[_Compiled], et: int | None, pad: str) -> list[str]:
    """Lines testing `cs` in order on frames of ethertype `et`, returning the first match's
    index (or -1), indented by `pad`."""
    lines = []
    for c in cs:
        if not c.conds:
            lines.append(f"{pad}return {c.index}")
            break
        lines.append(f"{pad}if {' and '.join(c.conds)}:")
        lines.append(f"{pad}    return {c.index}")
    else:
        lines.append(f"{pad}return -1")
    text = "\n".join(lines)
    # ports parsed once, only for IP buckets whose rules look at them
    wanted = [v for v in _PRELUDE if re.search(rf"\b{v}\b", text)]
    pre = []
    if wanted and et in _L4:
        pre += [pad + line.strip() for line in _L4[et].split("\n")]
    pre += [pad + _PRELUDE[v] for v in wanted]
    return pre + lines


def _none(f: bytes, v: int) -> int:
    return -1


class RuleMatcher:
    """The rules of one port and direction, compiled: `match(frame, vid)` returns the first
    matching rule (and counts it), or None. `hits[i]` counts matches of `rules[i]`."""

    __slots__ = ("fn", "hits", "last", "rules", "source")

    def __init__(self, rules: Iterable[TrafficRule]) -> None:
        self.rules: tuple[TrafficRule, ...] = tuple(sorted(rules, key=lambda r: r.sequence))
        self.hits: list[int] = [0] * len(self.rules)
        #: the rule that decided the last frame that matched one (for `hvsim trace`)
        self.last: TrafficRule | None = None
        g = _Gen()
        comp = [c for c in (_compile(i, r, g) for i, r in enumerate(self.rules)) if not c.never]
        # Dispatch on the ethertype, and for IP on the protocol: a frame is tested only
        # against the rules that could match it, in sequence order, in one generated function.
        ets = {et for c in comp if c.ethertypes for et in c.ethertypes}
        ets |= {et for c in comp for et in c.not_ethertypes}

        def fits_et(c: _Compiled, et: int | None) -> bool:
            if c.ethertypes is not None:
                return et in c.ethertypes
            return et not in c.not_ethertypes

        def fits_proto(c: _Compiled, pr: int | None) -> bool:
            if c.protocols is not None:
                return pr in c.protocols
            return pr not in c.not_protocols

        src = ["def match(f, v):", "    et = (f[12] << 8) | f[13]"]
        first = True
        for et in sorted(ets | {ETH_IPV4, ETH_IPV6}):
            here = [c for c in comp if fits_et(c, et)]
            src.append(f"    {'if' if first else 'elif'} et == {et}:")
            first = False
            if et in (ETH_IPV4, ETH_IPV6):
                ok, at = ("len(f) >= 34 and f[14] >> 4 == 4", 23) if et == ETH_IPV4 else \
                    ("len(f) >= 54 and f[14] >> 4 == 6", 20)
                src.append(f"        if {ok}:")
                src.append(f"            p = f[{at}]")
                protos = sorted({p for c in here if c.protocols for p in c.protocols} |
                                {p for c in here for p in c.not_protocols})
                for i, pr in enumerate(protos):
                    src.append(f"            {'if' if i == 0 else 'elif'} p == {pr}:")
                    src += _body([c for c in here if fits_proto(c, pr)], et, " " * 16)
                if protos:
                    src.append("            else:")
                src += _body([c for c in here if fits_proto(c, None)], et,
                             " " * (16 if protos else 12))
                # cut or not really IP: only rules without an IP qualifier
                src.append("        else:")
                src += _body([c for c in here if not c.ip], None, " " * 12)
            else:
                src += _body(here, et, " " * 8)
        src.append("    else:")
        src += _body([c for c in comp if fits_et(c, None)], None, " " * 8)
        #: the generated matcher, for the curious (`print(m.source)`)
        self.source = "\n".join(src) + "\n"
        ns = dict(g.ns)
        # only our own text: every configured value is a constant in `ns`
        exec(compile(self.source, "<traffic rules>", "exec"), ns)
        #: (frame of 14+ bytes, guest VLAN) -> index of the first matching rule, or -1
        self.fn: Callable[[bytes, int], int] = ns["match"]

    def match(self, f: bytes, vid: int) -> TrafficRule | None:
        """The first rule matching untagged frame `f` (its guest VLAN `vid`, 0 = none)."""
        if len(f) < 14:
            return None
        i = self.fn(f, vid)
        if i < 0:
            return None
        self.hits[i] += 1
        rule = self.last = self.rules[i]
        return rule

    def counters(self) -> dict[int, int]:
        """Matches per rule, by sequence number."""
        return {r.sequence: n for r, n in zip(self.rules, self.hits, strict=True)}


# -- marking ---------------------------------------------------------------------------------
def set_dscp(f: bytes, dscp: int) -> bytes:
    """Untagged frame `f` with its IPv4/IPv6 DSCP set to `dscp` (ECN kept; the IPv4 header
    checksum updated incrementally, RFC 1624 eqn. 3); other frames come back unchanged."""
    et = (f[12] << 8) | f[13] if len(f) >= 14 else 0
    if et == ETH_IPV4 and len(f) >= 34 and f[14] >> 4 == 4:
        old = f[15]
        new = (dscp << 2) | (old & 3)
        if new == old:
            return f
        hc = (f[24] << 8) | f[25]
        m_old = (f[14] << 8) | old
        m_new = (f[14] << 8) | new
        s = (~hc & 0xFFFF) + (~m_old & 0xFFFF) + m_new
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        csum = ~s & 0xFFFF
        return b"".join((f[:15], bytes((new,)), f[16:24], csum.to_bytes(2, "big"), f[26:]))
    if et == ETH_IPV6 and len(f) >= 54 and f[14] >> 4 == 6:
        tc = ((f[14] & 0x0F) << 4) | (f[15] >> 4)
        tc = (dscp << 2) | (tc & 3)
        return b"".join((f[:14], bytes((0x60 | (tc >> 4), ((tc & 0x0F) << 4) | (f[15] & 0x0F))),
                         f[16:]))
    return f


def mark(rule: TrafficRule, f: bytes, pcp: int) -> tuple[bytes, int]:
    """Apply a tag rule to untagged frame `f` with priority `pcp` (bit 3 = 802.1ad TPID, kept):
    the new frame and priority."""
    if rule.dscp is not None:
        f = set_dscp(f, rule.dscp)
    if rule.cos is not None:
        pcp = (pcp & 8) | rule.cos
    return f, pcp


# -- documents (topology YAML, the vDS configuration JSON) -----------------------------------
_DIRECTION_ALIASES = {"in": Direction.INCOMING, "ingress": Direction.INCOMING,
                      "out": Direction.OUTGOING, "egress": Direction.OUTGOING}
_RULE_KEYS = ("sequence", "description", "direction", "action", "dscp", "cos", "mac", "ip",
              "system_traffic")
_MAC_KEYS = ("src", "dst", "protocol", "vlan")
_IP_KEYS = ("src", "dst", "protocol", "src_port", "dst_port", "version", "tcp_flags")


def _keys(raw: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    extra = [k for k in raw if k not in allowed]
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(allowed)})")
    return raw


def rule_from_doc(raw: Any, where: str = "rule") -> TrafficRule:
    """One rule from its document form (see `ruleset_to_doc`); ConfigError names `where`."""
    d = _keys(raw, _RULE_KEYS, where)
    try:
        quals: list[Qualifier] = []
        if d.get("mac") is not None:
            quals.append(MacQualifier(**_keys(d["mac"], _MAC_KEYS, f"{where}.mac")))
        if d.get("ip") is not None:
            quals.append(IpQualifier(**_keys(d["ip"], _IP_KEYS, f"{where}.ip")))
        if d.get("system_traffic") is not None:
            quals.append(SystemTrafficQualifier(str(d["system_traffic"])))
        if "sequence" not in d:
            raise ConfigError("needs `sequence:` (rules run in sequence order)")
        direction = d.get("direction", Direction.BOTH)
        direction = _DIRECTION_ALIASES.get(direction, direction) if isinstance(
            direction, str) else direction
        desc = d.get("description", "")
        if not isinstance(desc, str):
            raise ConfigError(f"description: expected text, got {desc!r}")
        return TrafficRule(d["sequence"], d.get("action", RuleAction.DROP), direction,
                           tuple(quals), desc, d.get("dscp"), d.get("cos"))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def ruleset_from_doc(raw: Any, where: str = "traffic_rules") -> TrafficRuleset | None:
    """A ruleset from a list of rules or `{enabled, rules}`; None for None."""
    if raw is None:
        return None
    enabled = True
    if isinstance(raw, dict):
        d = _keys(raw, ("enabled", "rules"), where)
        enabled = d.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}.enabled: {enabled!r} must be true or false")
        raw = d.get("rules", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of rules")
    if len(raw) > MAX_RULES:
        raise ConfigError(f"{where}: {len(raw)} rules, more than {MAX_RULES}")
    rules = tuple(rule_from_doc(r, f"{where}[{i}]") for i, r in enumerate(raw))
    try:
        return TrafficRuleset(rules, enabled)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def ruleset_to_doc(rs: TrafficRuleset) -> dict[str, Any]:
    """The document form: `{enabled, rules: [{sequence, action, direction, ..., mac, ip,
    system_traffic}]}` (what `ruleset_from_doc` reads)."""
    rules = []
    for r in rs.rules:
        d: dict[str, Any] = {"sequence": r.sequence, "action": r.action.value,
                             "direction": r.direction.value}
        if r.description:
            d["description"] = r.description
        for k in ("dscp", "cos"):
            if getattr(r, k) is not None:
                d[k] = getattr(r, k)
        for q in r.qualifiers:
            if isinstance(q, SystemTrafficQualifier):
                d["system_traffic"] = q.type
            else:
                keys = _MAC_KEYS if isinstance(q, MacQualifier) else _IP_KEYS
                d["mac" if isinstance(q, MacQualifier) else "ip"] = {
                    k: getattr(q, k) for k in keys if getattr(q, k) is not None}
        rules.append(d)
    return {"enabled": rs.enabled, "rules": rules}
