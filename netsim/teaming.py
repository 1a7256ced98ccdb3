"""NIC teaming decisions for a switch with several uplinks (pure: no clock, no I/O).

Route based on originating virtual port (the vSphere default): each VM port is pinned to one
uplink, chosen from its port id over the uplinks in use; the choice is recomputed only when the
set of usable uplinks changes (a link goes down or comes back). Active uplinks are used while any
is up; standby uplinks only when every active one is down (explicit failover order = the first
usable uplink for every port).

No duplicates on the way in: a frame arriving on an uplink that is not in use (standby, down) is
dropped; a flooded frame (broadcast, multicast, unknown unicast) arriving on an uplink in use is
delivered only to the VM ports pinned to that uplink, so each VM gets exactly one copy however
many uplinks the physical network floods it to. A frame coming back in whose source MAC is one
of the switch's own VM ports is the physical network reflecting our flood and is dropped too
(the switch checks that, as it owns the MAC table).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


class Team:
    """The uplinks of one switch, their link state, and the port-to-uplink pinning."""

    def __init__(self, active: Sequence[str], standby: Sequence[str] = (), *,
                 policy: str = "port-id") -> None:
        if not active:
            raise ValueError("a team needs at least one active uplink")
        if set(active) & set(standby):
            raise ValueError("an uplink cannot be both active and standby")
        if policy not in ("port-id", "failover"):
            raise ValueError(f"unknown teaming policy {policy!r}")
        self.active = tuple(active)
        self.standby = tuple(standby)
        self.policy = policy
        self._up = set(self.active) | set(self.standby)
        self.version = 0  # bumps each time the uplinks in use change (pinning recomputed)
        self._in_use = self._compute()

    @property
    def uplinks(self) -> tuple[str, ...]:
        """Every uplink of the team, active first."""
        return self.active + self.standby

    @property
    def in_use(self) -> tuple[str, ...]:
        """The uplinks carrying traffic now (up actives, or up standbys if no active is up)."""
        return self._in_use

    def _compute(self) -> tuple[str, ...]:
        live = tuple(u for u in self.active if u in self._up)
        if not live:
            live = tuple(u for u in self.standby if u in self._up)
        if self.policy == "failover":
            live = live[:1]
        return live

    def set_link(self, uplink: str, up: bool) -> bool:
        """Record a link state change; True when the uplinks in use (and the pinning) changed."""
        if uplink not in self.uplinks:
            raise KeyError(uplink)
        (self._up.add if up else self._up.discard)(uplink)
        new = self._compute()
        if new == self._in_use:
            return False
        self._in_use = new
        self.version += 1
        return True

    def is_up(self, uplink: str) -> bool:
        """The link state last recorded for `uplink`."""
        return uplink in self._up

    def uplink_for(self, port_id: int) -> str | None:
        """The uplink a VM port's frames leave by (None: every uplink is down)."""
        if not self._in_use:
            return None
        return self._in_use[port_id % len(self._in_use)]

    def accepts(self, uplink: str, port_id: int | None, flooded: bool) -> bool:
        """Whether a frame that arrived on `uplink` may go to VM port `port_id`.

        `port_id` None asks whether the uplink takes traffic at all.
        """
        if uplink not in self._in_use:
            return False
        if port_id is None or not flooded:
            return True
        return self.uplink_for(port_id) == uplink

    def pinning(self, port_ids: Iterable[int]) -> dict[int, str | None]:
        """Port id → uplink for a set of ports (for display and tests)."""
        return {p: self.uplink_for(p) for p in port_ids}
