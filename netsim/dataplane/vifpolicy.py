"""XenServer VIF policies: locking (`VIF.locking_mode`, `ipv4_allowed`, `ipv6_allowed`) and
QoS (`qos_algorithm_type=ratelimit`, `qos_algorithm_params:kbps=N`).

Locking, as xapi/xenopsd enforce it (`setup-vif-rules`, the Open vSwitch flavour):
- `network_default`: the VIF follows its network's `default_locking_mode` (`unlocked`, the
  default, or `disabled`).
- `unlocked`: no filtering.
- `locked`: from the VM only frames with the VIF's own source MAC pass, and of those only ARP
  whose sender (MAC, IPv4) is the VIF's MAC and an address in `ipv4_allowed`; IPv4 from an
  address in `ipv4_allowed` (plus DHCP requests, UDP 68 → 67, so a guest can get its address);
  IPv6 from an address in `ipv6_allowed`, and neighbour advertisements for a target in it.
  Everything else the VM sends (other ethertypes, other addresses; any IP at all when no
  address is listed) is dropped and counted as `vif-locked`. Traffic to the VM is not filtered.
- `disabled`: every frame, in either direction, is dropped and counted as `vif-disabled`.

QoS: netback limits what the guest transmits to `kbps` kilobytes (of 1024 bytes) per second,
handing out credit every 50 ms (xl's and xenopsd's default `rate` interval). Here that is a
policer on frames from the VM with average = peak = the rate and a burst of one interval's
credit (at least one maximum-size frame) sent at line rate; frames over it are dropped as
`vif-qos` (netback holds them in the guest's ring instead; a VM that keeps sending sees the
same throughput).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from netsim.dataplane.policy import ShapingPolicy
from netsim.dataplane.shaper import MAX_FRAME
from netsim.errors import ConfigError

CREDIT_INTERVAL_S = 0.050  # netback's default credit interval (xl `rate=.../s@50ms`)
LINE_RATE_BPS = 10_000_000_000  # what a credit burst leaves at (a 10 Gbit/s PIF)


class LockingMode(StrEnum):
    """`VIF.locking_mode`."""

    NETWORK_DEFAULT = "network_default"
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    DISABLED = "disabled"


def locking_mode(value: object, what: str = "locking_mode") -> LockingMode:
    """`value` as a LockingMode, or ConfigError naming `what`."""
    try:
        return LockingMode(value)
    except ValueError:
        ok = ", ".join(m.value for m in LockingMode)
        raise ConfigError(f"{what}: {value!r} is not one of {ok}") from None


@dataclass(frozen=True, slots=True)
class VifLocking:
    """A VIF's locking mode and the addresses it may use when locked."""

    mode: LockingMode = LockingMode.NETWORK_DEFAULT
    ipv4_allowed: tuple[str, ...] = ()
    ipv6_allowed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", locking_mode(self.mode))
        for name, cls in (("ipv4_allowed", ipaddress.IPv4Address),
                          ("ipv6_allowed", ipaddress.IPv6Address)):
            vals = getattr(self, name)
            if isinstance(vals, str):
                vals = (vals,)
            out = []
            for v in vals:
                try:
                    out.append(str(cls(str(v))))
                except ValueError:
                    raise ConfigError(f"{name}: {v!r} is not an IPv{4 if name[3] == '4' else 6}"
                                      " address") from None
            object.__setattr__(self, name, tuple(out))

    def effective(self, network_default: LockingMode) -> LockingMode:
        """The mode in force: `network_default` resolved to the network's."""
        if self.mode is LockingMode.NETWORK_DEFAULT:
            return network_default
        return self.mode

    def describe(self, network_default: LockingMode = LockingMode.UNLOCKED) -> str:
        """e.g. `locking_mode=locked ipv4_allowed=10.0.0.5`."""
        mode = self.effective(network_default)
        s = f"locking_mode={self.mode.value}"
        if self.mode is LockingMode.NETWORK_DEFAULT:
            s += f" (network default: {mode.value})"
        if mode is LockingMode.LOCKED:
            s += f" ipv4_allowed={','.join(self.ipv4_allowed) or '(none)'}"
            s += f" ipv6_allowed={','.join(self.ipv6_allowed) or '(none)'}"
        return s


@dataclass(frozen=True, slots=True)
class VifQos:
    """`qos_algorithm_type=ratelimit`, `qos_algorithm_params:kbps=N` (kilobytes/s)."""

    kbps: int

    def __post_init__(self) -> None:
        if isinstance(self.kbps, bool) or not isinstance(self.kbps, int) or self.kbps <= 0:
            raise ConfigError(f"qos_algorithm_params:kbps: {self.kbps!r} must be a positive "
                              "integer (kilobytes per second)")

    def shaping(self) -> ShapingPolicy:
        """The policer netback's credit scheduler amounts to (see the module docstring)."""
        bps = self.kbps * 1024 * 8
        burst = max(MAX_FRAME, int(self.kbps * 1024 * CREDIT_INTERVAL_S))
        # an interval's credit may go out back to back: the peak is the line rate
        return ShapingPolicy(bps, max(bps, LINE_RATE_BPS), burst)

    def describe(self) -> str:
        """e.g. `qos ratelimit kbps=100`."""
        return f"qos_algorithm_type=ratelimit kbps={self.kbps}"


class LockChecker:
    """The locked-mode check of frames from one VIF: `refuse(frame)` is True when the frame
    must be dropped."""

    __slots__ = ("locking", "mac", "v4", "v6")

    def __init__(self, locking: VifLocking, mac: bytes) -> None:
        self.locking = locking
        self.mac = mac
        self.v4 = frozenset(ipaddress.IPv4Address(a).packed for a in locking.ipv4_allowed)
        self.v6 = frozenset(ipaddress.IPv6Address(a).packed for a in locking.ipv6_allowed)

    def refuse(self, f: bytes) -> bool:
        """True if locked mode drops untagged frame `f` sent by the VM."""
        if f[6:12] != self.mac or len(f) < 14:
            return True
        et = f[12:14]
        if et == b"\x08\x06":  # ARP (Ethernet/IPv4): sender MAC and IP
            return len(f) < 42 or f[22:28] != self.mac or f[28:32] not in self.v4
        if et == b"\x08\x00":
            if len(f) < 34 or f[14] >> 4 != 4:
                return True
            if f[26:30] in self.v4:
                return False
            ihl = (f[14] & 0x0F) * 4
            o = 14 + ihl
            # DHCP request (UDP 68 -> 67)
            return not (f[23] == 17 and len(f) >= o + 4 and f[o:o + 4] == b"\x00\x44\x00\x43")
        if et == b"\x86\xdd":
            if len(f) < 54 or f[14] >> 4 != 6:
                return True
            if f[22:38] in self.v6:
                return False
            # neighbour advertisement (ICMPv6 136) for an allowed target
            return not (f[20] == 58 and len(f) >= 78 and f[54] == 136 and f[62:78] in self.v6)
        return True


def addresses(values: Iterable[object] | str | None) -> tuple[str, ...]:
    """A YAML value (one address or a list) as a tuple of strings."""
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(str(v) for v in values)
