"""Load-based teaming (LBT): vSphere's "Route based on physical NIC load"
(`loadbalance_loadbased`).

vSphere (networking guide, "Route Based on Physical NIC Load"): ports are placed as by
originating virtual port; the switch "checks the actual load of the uplinks every 30 seconds"
and "if the load of an uplink exceeds 75 percent of its capacity" (mean receive or transmit
utilisation over the 30 s) it moves a port with I/O off it to an uplink with spare capacity.
Here, at each check and for each uplink whose mean rx or tx use exceeds 75 % of its speed:
the busiest VM port pinned to it moves to the least-used other uplink of its team, provided
that uplink would stay at or under 75 % with the port's load added (otherwise nothing moves -
moving would just overload the other side). One port per overloaded uplink per check; a port
that moved stays there (until its uplink fails or the load moves it again). Under 75 % nothing
ever moves.

A port's load is what its vNIC sent into the switch (toward the uplink: the uplink's tx) and
what the switch sent to it (the uplink's rx), from the port counters over the window - its
VM-to-VM traffic on the same host counts too, a small over-estimate. An uplink's speed is its
link's `rate` (the netem rate of the PIF's `impair:`, the fabric's rate model) when set, else
its `speed_bps` attribute, else 10 Gbit/s.

Pure decision (`plan_moves`) plus the periodic task (`LoadBasedTeaming`), on the fabric clock.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netsim.clock import Clock
from netsim.dataplane.policy import LoadBalancing
from netsim.dataplane.switch import ROLE_VM

if TYPE_CHECKING:
    from netsim.dataplane.port import Port
    from netsim.dataplane.switch import StandardSwitch

#: seconds between load checks (vSphere: 30)
CHECK_S = 30.0
#: mean utilisation of an uplink's speed above which a port moves (vSphere: 75 %)
THRESHOLD = 0.75
DEFAULT_SPEED_BPS = 10_000_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Move:
    """One LBT decision: `port` leaves `src` for `dst` (uplink names) at `time_ns`."""

    time_ns: int
    port: str
    src: str
    dst: str
    utilisation: float  # the source uplink's mean use (the larger of rx and tx), 0..1


def plan_moves(
    teams: Mapping[Any, Sequence[Any]],
    pinned: Mapping[Any, Any],
    port_load: Mapping[Any, tuple[int, int]],
    uplink_load: Mapping[Any, tuple[int, int]],
    speed_bps: Mapping[Any, int],
    window_s: float,
    threshold: float = THRESHOLD,
) -> list[tuple[Any, Any, Any, float]]:
    """The moves of one check: (port, from uplink, to uplink, from's utilisation).

    `teams[port]` = the uplinks the port may use (up, in team order); `pinned[port]` = its
    uplink now; `port_load[port]` / `uplink_load[uplink]` = (tx bytes, rx bytes) over the
    window (port tx = toward the physical network); `speed_bps[uplink]` its speed."""
    cap = {u: speed_bps[u] * window_s / 8 for u in speed_bps}  # bytes per window
    tx = {u: float(uplink_load.get(u, (0, 0))[0]) for u in cap}
    rx = {u: float(uplink_load.get(u, (0, 0))[1]) for u in cap}

    def use(u: Any) -> float:
        return max(tx[u], rx[u]) / cap[u] if cap[u] > 0 else 0.0

    moves = []
    for u in list(cap):
        util = use(u)
        if util <= threshold:
            continue
        ports = sorted((p for p, pu in pinned.items() if pu is u and p in port_load),
                       key=lambda p: -(port_load[p][0] + port_load[p][1]))
        for p in ports:
            ptx, prx = port_load[p]
            if ptx + prx == 0:
                break
            others = [o for o in teams.get(p, ()) if o is not u and o in cap]
            if not others:
                continue
            dst = min(others, key=use)
            if cap[dst] <= 0 or max(tx[dst] + ptx, rx[dst] + prx) / cap[dst] > threshold:
                continue
            tx[dst] += ptx
            rx[dst] += prx
            tx[u] -= ptx
            rx[u] -= prx
            moves.append((p, u, dst, util))
            break
    return moves


def link_speed_bps(uplink: Port) -> int:
    """An uplink's speed: its outgoing link rate (netem `rate`) if any, else its `speed_bps`,
    else 10 Gbit/s."""
    path = getattr(uplink, "impair_out", None)
    imp = getattr(getattr(path, "model", None), "imp", None)
    rate = getattr(imp, "rate_bps", 0)
    if rate:
        return int(rate)
    speed = getattr(uplink, "speed_bps", None)
    return int(speed) if speed else DEFAULT_SPEED_BPS


class LoadBasedTeaming:
    """LBT on one vSwitch: `await lbt.run()` as a fabric task, or `check()` per window.

    Moves apply to the VM ports whose policy (switch's, or their port group's override) is
    `load-based`; `moves` lists every one made."""

    def __init__(self, switch: StandardSwitch, *, check_s: float = CHECK_S,
                 threshold: float = THRESHOLD,
                 speed_of: Callable[[Port], int] = link_speed_bps) -> None:
        self.switch = switch
        self.clock: Clock = switch.clock
        self.check_ns = round(check_s * NS_PER_S)
        self.threshold = threshold
        self.speed_of = speed_of
        self.moves: list[Move] = []
        self.checks = 0
        self.closed = False
        self._last: dict[Port, tuple[int, int]] = {}
        self._last_ns = self.clock.now_ns()
        self._snapshot()

    def _ports(self) -> list[Port]:
        sw = self.switch
        return [p for p in sw.ports.values() if p.sw_role == ROLE_VM
                and sw.teaming_of(p).load_balancing is LoadBalancing.LOAD_BASED]

    def _snapshot(self) -> dict[Port, tuple[int, int]]:
        now: dict[Port, tuple[int, int]] = {}
        for p in self.switch.uplinks:
            now[p] = (p.counters.tx_bytes, p.counters.rx_bytes)
        for p in self._ports():  # the switch receives what the VM sends: port rx = uplink tx
            now[p] = (p.counters.rx_bytes, p.counters.tx_bytes)
        delta = {p: (v[0] - self._last.get(p, (0, 0))[0], v[1] - self._last.get(p, (0, 0))[1])
                 for p, v in now.items()}
        self._last = now
        return delta

    def check(self) -> list[Move]:
        """One 30 s check: measure the window since the last one and move what must move."""
        now = self.clock.now_ns()
        window_s = (now - self._last_ns) / NS_PER_S
        self._last_ns = now
        delta = self._snapshot()
        self.checks += 1
        if window_s <= 0:
            return []
        sw = self.switch
        ports = self._ports()
        teams = {p: sw.team_members(p) for p in ports}
        pinned = {p: sw.uplink_for(p) for p in ports}
        speeds = {u: self.speed_of(u) for u in sw.uplinks}
        made = []
        for p, src, dst, util in plan_moves(
                teams, pinned, {p: delta.get(p, (0, 0)) for p in ports},
                {u: delta.get(u, (0, 0)) for u in sw.uplinks}, speeds, window_s,
                self.threshold):
            sw.pin_port(p, dst)
            m = Move(now, p.name, src.name, dst.name, util)
            self.moves.append(m)
            made.append(m)
        return made

    async def run(self) -> None:
        """Check every `check_s` seconds of the switch's clock until cancelled."""
        next_ns = self.clock.now_ns()
        while not self.closed:
            next_ns += self.check_ns
            await self.clock.sleep(max(0, next_ns - self.clock.now_ns()) / NS_PER_S)
            if not self.closed:
                self.check()

    def close(self) -> None:
        """Stop checking (the task ends at its next wake-up); ports stay where they are."""
        self.closed = True
