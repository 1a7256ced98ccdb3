"""Private VLANs: a primary VLAN split into promiscuous, isolated and community secondaries.

Semantics of the vSphere API's `VMwareDVSPvlanMapEntry` (`primaryVlanId`, `secondaryVlanId`,
`pvlanType` "promiscuous" | "isolated" | "community") and of PVLAN-aware physical switches
(RFC 5517, "Cisco Systems' Private VLANs"):
- the promiscuous secondary has the primary's ID; a primary has exactly one, and at most one
  isolated secondary; a secondary belongs to one primary;
- a frame belongs to the VLAN of the port it came from (promiscuous ports: the primary), and on
  a trunk it is tagged with that ID, so a PVLAN-aware switch at the other end knows its type;
- a port receives: promiscuous - every VLAN of its primary; isolated - the primary only (never
  another isolated port); community - the primary and its own community;
- all VLANs of one primary share one MAC table (RFC 5517 §2.3: shared VLAN learning), so a
  reply from a promiscuous port finds the isolated host it answers.
A switch with a map treats each of the map's VLAN IDs as private. Pure values; no I/O.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from netsim.dataplane.policy import MAX_VLAN
from netsim.errors import ConfigError


class PvlanType(StrEnum):
    """`pvlanType` of a `VMwareDVSPvlanMapEntry`."""

    PROMISCUOUS = "promiscuous"
    ISOLATED = "isolated"
    COMMUNITY = "community"


@dataclass(frozen=True, slots=True)
class PvlanEntry:
    """One `VMwareDVSPvlanMapEntry`: a secondary VLAN of a primary, with its type."""

    primary: int
    secondary: int
    type: PvlanType

    def __post_init__(self) -> None:
        for what in ("primary", "secondary"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VLAN:
                raise ConfigError(f"pvlan {what}: VLAN ID {v!r} out of range 1-{MAX_VLAN}")
        try:
            object.__setattr__(self, "type", PvlanType(self.type))
        except ValueError:
            ok = ", ".join(t.value for t in PvlanType)
            raise ConfigError(f"pvlan {self.secondary}: type {self.type!r} is not one of "
                              f"{ok}") from None
        promisc = self.type is PvlanType.PROMISCUOUS
        if promisc != (self.secondary == self.primary):
            raise ConfigError(
                f"pvlan {self.secondary}: only the promiscuous secondary has the primary's ID "
                f"({self.primary}); {self.type.value} needs another one"
            )


class PvlanMap:
    """The PVLAN map of a switch: which VLAN IDs are private, and who reaches whom."""

    __slots__ = ("_by_vid", "_rx", "entries")

    def __init__(self, entries: Iterable[PvlanEntry] = ()) -> None:
        by_vid: dict[int, PvlanEntry] = {}
        for e in entries:
            if not isinstance(e, PvlanEntry):
                raise ConfigError(f"pvlan map: expected PvlanEntry, not {e!r}")
            old = by_vid.get(e.secondary)
            if old is not None:
                raise ConfigError(f"pvlan {e.secondary}: listed twice (primary {old.primary} "
                                  f"{old.type.value}, primary {e.primary} {e.type.value})")
            by_vid[e.secondary] = e
        for e in by_vid.values():
            if e.primary not in by_vid:
                raise ConfigError(f"pvlan {e.secondary}: primary {e.primary} has no "
                                  "promiscuous entry")
            if by_vid[e.primary].type is not PvlanType.PROMISCUOUS:
                raise ConfigError(f"pvlan {e.secondary}: VLAN {e.primary} is itself a "
                                  f"{by_vid[e.primary].type.value} secondary, not a primary")
        isolated: dict[int, int] = {}
        for e in by_vid.values():
            if e.type is PvlanType.ISOLATED:
                if e.primary in isolated:
                    raise ConfigError(f"pvlan {e.secondary}: primary {e.primary} already has "
                                      f"isolated secondary {isolated[e.primary]} (one allowed)")
                isolated[e.primary] = e.secondary
        self.entries: tuple[PvlanEntry, ...] = tuple(
            sorted(by_vid.values(), key=lambda e: (e.primary, e.secondary)))
        self._by_vid = by_vid
        self._rx: dict[int, frozenset[int]] = {}
        for e in by_vid.values():
            if e.type is PvlanType.PROMISCUOUS:
                rx = frozenset(s for s, o in by_vid.items() if o.primary == e.primary)
            elif e.type is PvlanType.ISOLATED:
                rx = frozenset({e.primary})
            else:
                rx = frozenset({e.primary, e.secondary})
            self._rx[e.secondary] = rx

    @classmethod
    def from_mapping(cls, data: Mapping[int, Mapping[int | str, str]] | None) -> PvlanMap:
        """`{primary: {secondary: type}}` (the primary itself may be left out: it is always
        promiscuous) → a map."""
        entries: list[PvlanEntry] = []
        for primary, secs in (data or {}).items():
            entries.append(PvlanEntry(primary, primary, PvlanType.PROMISCUOUS))
            for sec, kind in secs.items():
                sid = int(sec)
                if sid == primary:
                    continue
                entries.append(PvlanEntry(primary, sid, PvlanType(kind)))
        return cls(entries)

    def __bool__(self) -> bool:
        return bool(self._by_vid)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PvlanMap) and self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"PvlanMap({self.describe()!r})"

    def __contains__(self, vid: object) -> bool:
        return vid in self._by_vid

    def entry(self, vid: int) -> PvlanEntry | None:
        """The map's entry for VLAN `vid` (None if `vid` is not private)."""
        return self._by_vid.get(vid)

    def fids(self) -> dict[int, int]:
        """VLAN → the VLAN whose MAC table it learns in (its primary), for private VLANs."""
        return {v: e.primary for v, e in self._by_vid.items()}

    def receives(self, vid: int) -> frozenset[int]:
        """The VLANs a host port in private VLAN `vid` receives (KeyError if not private)."""
        return self._rx[vid]

    def reaches(self, src_vid: int, dst_vid: int) -> bool:
        """True if a port in `src_vid` may deliver to a host port in `dst_vid` (both
        private VLANs of this map)."""
        return src_vid in self._rx[dst_vid]

    def describe(self) -> str:
        """`100: 100 promiscuous, 101 isolated, 102 community`, primaries separated by `; `."""
        parts: dict[int, list[str]] = {}
        for e in self.entries:
            parts.setdefault(e.primary, []).append(f"{e.secondary} {e.type.value}")
        return "; ".join(f"{p}: {', '.join(s)}" for p, s in parts.items())

    def to_list(self) -> list[dict[str, object]]:
        """The entries as `VMwareDVSPvlanMapEntry`-shaped dicts (JSON, YAML)."""
        return [{"primary": e.primary, "secondary": e.secondary, "type": e.type.value}
                for e in self.entries]
