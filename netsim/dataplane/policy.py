"""Port configuration as frozen values: VLAN handling, security, shaping, teaming.

Semantics follow Open vSwitch `vswitch.xml` (port VLAN modes) and the vSphere networking guide
(port group VLAN ID, security and shaping policies, NIC teaming); see DESIGN.md §3. Every value is
checked when built, and a bad one raises `ConfigError` naming the field.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from netsim.errors import ConfigError

MAX_VLAN = 4094  # highest VLAN a frame may belong to; 4095 is reserved
VGT = 4095  # vSphere port group VLAN ID meaning "guest tags pass through"


def check_vlan(vid: object, what: str = "vlan", *, allow_vgt: bool = False) -> int:
    """Return `vid` if it is a VLAN ID 0-4094 (0-4095 with `allow_vgt`), else raise ConfigError
    naming `what`."""
    top = VGT if allow_vgt else MAX_VLAN
    if isinstance(vid, bool) or not isinstance(vid, int) or not 0 <= vid <= top:
        raise ConfigError(f"{what}: VLAN ID {vid!r} out of range 0-{top}")
    return vid


class VlanMode(StrEnum):
    """How a port maps frames to VLANs (OVS `vlan_mode`)."""

    ACCESS = "access"  # untagged in and out; tagged arrivals (nonzero VID) are dropped
    TRUNK = "trunk"  # tagged in and out for the listed VLANs; untagged = VLAN 0
    NATIVE_TAGGED = "native-tagged"  # untagged arrivals join the native VLAN; it leaves tagged
    NATIVE_UNTAGGED = "native-untagged"  # as above, but the native VLAN leaves untagged


@dataclass(frozen=True, slots=True)
class VlanPolicy:
    """A port's VLAN mode. Build with `access(5)`, `trunk(5, 65)`, `native_untagged(1, ...)`.

    `vlan` is the access VLAN or the native VLAN; `trunks` lists the VLANs a trunk/native port
    carries (empty = all 0-4094). VID 0 is "untagged": a trunk carries it when `trunks` is empty or
    lists 0, a native-tagged/native-untagged port never does (unless its native VLAN is 0, as in
    OVS), and a frame in VLAN 0 with priority 0 leaves a trunk without a tag.
    """

    mode: VlanMode = VlanMode.TRUNK
    vlan: int = 0
    trunks: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", VlanMode(self.mode))
        except ValueError:
            modes = ", ".join(m.value for m in VlanMode)
            raise ConfigError(f"vlan_mode: {self.mode!r} is not one of {modes}") from None
        check_vlan(self.vlan, "vlan")
        trunks = frozenset(self.trunks)
        for v in sorted(trunks, key=repr):
            check_vlan(v, "trunks")
        object.__setattr__(self, "trunks", trunks)
        if self.mode is VlanMode.ACCESS and trunks:
            raise ConfigError("trunks: an access port carries only its own VLAN; drop the list")

    @classmethod
    def access(cls, vlan: int) -> VlanPolicy:
        """Untagged port in `vlan`."""
        return cls(VlanMode.ACCESS, vlan)

    @classmethod
    def trunk(cls, *vlans: int | Iterable[int]) -> VlanPolicy:
        """Tagged port carrying `vlans` (none given = all)."""
        return cls(VlanMode.TRUNK, 0, _flatten(vlans))

    @classmethod
    def native_tagged(cls, native: int, *vlans: int | Iterable[int]) -> VlanPolicy:
        """Trunk whose untagged arrivals join `native`; everything leaves tagged."""
        return cls(VlanMode.NATIVE_TAGGED, native, _flatten(vlans))

    @classmethod
    def native_untagged(cls, native: int, *vlans: int | Iterable[int]) -> VlanPolicy:
        """Trunk whose untagged arrivals join `native`, which also leaves untagged."""
        return cls(VlanMode.NATIVE_UNTAGGED, native, _flatten(vlans))

    def carries(self, vid: int) -> bool:
        """True if frames of VLAN `vid` may enter and leave this port."""
        if self.mode is VlanMode.ACCESS:
            return vid == self.vlan
        if self.mode is not VlanMode.TRUNK:
            if vid == self.vlan:
                return True
            if vid == 0:  # OVS (ofproto.c bundle_set): a native port never trunks VLAN 0
                return False
        return 0 <= vid <= MAX_VLAN and (not self.trunks or vid in self.trunks)

    def describe(self) -> str:
        """Short human form, e.g. `access 5`, `trunk 5,65`, `native-untagged 1 + all`."""
        listed = ",".join(map(str, sorted(self.trunks))) if self.trunks else "all"
        if self.mode is VlanMode.ACCESS:
            return f"access {self.vlan}"
        if self.mode is VlanMode.TRUNK:
            return f"trunk {listed}"
        return f"{self.mode.value} {self.vlan} + {listed}"


def _flatten(vlans: tuple[int | Iterable[int], ...]) -> frozenset[int]:
    out: set[int] = set()
    for v in vlans:
        if isinstance(v, int):
            out.add(v)
        else:
            out.update(v)
    return frozenset(out)


def port_group_vlan(vlan_id: int) -> VlanPolicy:
    """The VM-side VLAN policy of a vSphere port group VLAN ID.

    0 (EST: the physical switch tags) and 1-4094 (VST: the vSwitch tags toward uplinks and strips
    toward VMs) are access ports; 4095 (VGT) is a trunk of all VLANs: guest tags pass through.
    """
    check_vlan(vlan_id, "port group vlan", allow_vgt=True)
    if vlan_id == VGT:
        return VlanPolicy.trunk()
    return VlanPolicy.access(vlan_id)


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """vSphere port group security; True = Accept. Defaults are the vSS ones: Reject / Accept /
    Accept.

    promiscuous: Accept = the vNIC receives every frame of its VLAN on this switch; Reject = only
        frames to its MAC, broadcast and multicast.
    mac_changes: Reject = while the guest's effective MAC differs from its configured one, every
        inbound frame to that vNIC is dropped.
    forged_transmits: Reject = frames whose source MAC differs from the configured one are dropped.
    """

    promiscuous: bool = False
    mac_changes: bool = True
    forged_transmits: bool = True


@dataclass(frozen=True, slots=True)
class ShapingPolicy:
    """Traffic shaping (off unless given): average and peak in bits/s, burst in bytes.

    A frame conforms when both buckets hold enough: the average bucket fills at `average_bps` up to
    `burst_bytes`; the peak bucket fills at `peak_bps` up to 10 ms worth at peak (at least one
    maximum-size frame). Frames that do not conform are dropped and counted as `shaped`.
    """

    average_bps: int
    peak_bps: int
    burst_bytes: int

    def __post_init__(self) -> None:
        for name in ("average_bps", "peak_bps", "burst_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"shaping.{name}: {v!r} must be a positive integer")
        if self.peak_bps < self.average_bps:
            raise ConfigError(
                f"shaping.peak_bps: {self.peak_bps} is below average_bps {self.average_bps}"
            )


class LoadBalancing(StrEnum):
    """How a team picks the uplink of a frame."""

    PORT_ID = "port-id"  # "route based on originating virtual port" (vSphere default)
    EXPLICIT_FAILOVER = "failover"  # always the first active (then standby) uplink that is up
    IP_HASH = "ip-hash"  # loadbalance_ip: per frame, from the source and destination IPs
    SRC_MAC = "src-mac"  # loadbalance_srcmac: per frame, from the source MAC
    #: loadbalance_loadbased ("route based on physical NIC load", LBT): placed as port-id, then
    #: moved off an uplink whose mean use over 30 s exceeds 75 % (netsim.dataplane.lbt)
    LOAD_BASED = "load-based"


class FailureDetection(StrEnum):
    """How a team decides an uplink has failed (vSphere `HostNicFailureCriteria.checkBeacon`)."""

    LINK = "link"  # "Link status only" (vSphere default)
    BEACON = "beacon"  # "Beacon probing": link status and beacons (netsim.dataplane.beacon)


@dataclass(frozen=True, slots=True)
class TeamingPolicy:
    """NIC teaming of a switch's uplinks, by uplink (PIF) name.

    `active` uplinks carry traffic; `standby` ones take over, in order, when no active uplink is up.
    Empty `active` means every uplink not listed as standby, in the order they were added.
    `notify_switches`: a RARP per vNIC that moved to another uplink, sent on the new one
    (vSphere default yes). `failback`: a recovered uplink takes its ports back (default yes;
    no = vSphere's `rollingOrder`). `failure_detection`: link status only, or beacon probing.
    """

    active: tuple[str, ...] = ()
    standby: tuple[str, ...] = ()
    load_balancing: LoadBalancing = LoadBalancing.PORT_ID
    notify_switches: bool = True
    failback: bool = True
    failure_detection: FailureDetection = FailureDetection.LINK

    def __post_init__(self) -> None:
        object.__setattr__(self, "active", tuple(self.active))
        try:
            object.__setattr__(self, "failure_detection", FailureDetection(self.failure_detection))
        except ValueError:
            ok = ", ".join(m.value for m in FailureDetection)
            raise ConfigError(
                f"teaming.failure_detection: {self.failure_detection!r} is not one of {ok}"
            ) from None
        object.__setattr__(self, "standby", tuple(self.standby))
        try:
            object.__setattr__(self, "load_balancing", LoadBalancing(self.load_balancing))
        except ValueError:
            ok = ", ".join(m.value for m in LoadBalancing)
            raise ConfigError(
                f"teaming.load_balancing: {self.load_balancing!r} is not one of {ok}"
            ) from None
        for flag in ("notify_switches", "failback"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"teaming.{flag}: {getattr(self, flag)!r} must be true or false")
        both = set(self.active) & set(self.standby)
        if both:
            raise ConfigError(f"teaming: uplink(s) {sorted(both)} both active and standby")
