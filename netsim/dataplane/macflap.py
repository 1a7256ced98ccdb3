"""MAC flapping: one source MAC learned on one port, then another, then back.

A switch sees it when a host sends from one MAC over several links that are not one port-channel
- vSphere's "route based on IP hash" toward a physical switch without an EtherChannel, two
NICs bridged together, a loop. Real switches say so: Open vSwitch counts the moves
(`ovs-appctl fdb/stats-show`: "Total number of moved MAC entries"), Cisco IOS logs
`%SW_MATM-4-MACFLAP_NOTIF: Host 0050.5600.0001 in vlan 10 is flapping between port Gi1/0/1 and
port Gi1/0/2`. `MacFlapLog` keeps the same facts per (VLAN, MAC): how many moves, between which
ports, first and last time - bounded, so a MAC storm cannot grow it without limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netsim.wire.frame import mac_to_str

#: (VLAN, MAC) pairs remembered in detail; moves of others are still counted in `total`
MAX_TRACKED = 4096


@dataclass
class MacFlap:
    """The moves of one (VLAN, MAC)."""

    vlan: int
    mac: str
    moves: int = 0
    ports: list[str] = field(default_factory=list)  # in the order it was seen on them
    first_ns: int = 0
    last_ns: int = 0

    def message(self, switch: str) -> str:
        """One line in the spirit of Cisco's MACFLAP_NOTIF."""
        between = " and ".join(self.ports[:2]) + (
            f" (+{len(self.ports) - 2} more)" if len(self.ports) > 2 else "")
        return (f"{switch}: host {self.mac} in VLAN {self.vlan} is flapping between "
                f"{between}: {self.moves} move{'s' if self.moves != 1 else ''}")


class MacFlapLog:
    """Every MAC move a switch's table made (its `MacTable.on_move`)."""

    def __init__(self) -> None:
        self.total = 0
        self.flaps: dict[tuple[int, bytes], MacFlap] = {}

    def record(self, vid: int, mac: bytes, old: Any, new: Any, now_ns: int) -> None:
        """Note that `mac` in VLAN `vid` moved from port `old` to port `new` at `now_ns`."""
        self.total += 1
        f = self.flaps.get((vid, mac))
        if f is None:
            if len(self.flaps) >= MAX_TRACKED:
                return
            f = self.flaps[vid, mac] = MacFlap(vid, mac_to_str(mac), first_ns=now_ns,
                                                ports=[_name(old)])
        f.moves += 1
        f.last_ns = now_ns
        if _name(new) not in f.ports:
            f.ports.append(_name(new))

    def as_list(self) -> list[dict[str, Any]]:
        """JSON-able, most moves first."""
        rows = sorted(self.flaps.values(), key=lambda f: (-f.moves, f.vlan, f.mac))
        return [{"vlan": f.vlan, "mac": f.mac, "moves": f.moves, "ports": f.ports}
                for f in rows]


def _name(port: Any) -> str:
    return str(getattr(port, "name", port))
