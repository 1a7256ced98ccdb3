"""CDP and LLDP on a port: advertise on the fabric clock, learn neighbours with a hold time.

What the agents do, after the devices they stand for:
- ESXi (vSphere `LinkDiscoveryProtocolConfig`: protocol `cdp` | `lldp`, operation `none` |
  `listen` | `advertise` | `both`; a vSS speaks CDP and calls `none` "down"; default CDP
  listen): on each uplink, CDP every 60 s with holdtime 180 s - Device ID = the host name, Port
  ID = the vmnic, platform "VMware ESX", capability Switch, the switch's MTU; LLDP every 30 s
  with TTL 120 s - chassis = the vmnic's MAC, port = the vmnic, system name = the host.
- XenServer: xapi has no CDP/LLDP setting; its Open vSwitch does LLDP per interface, off by
  default - ovs-vswitchd.conf.db(5), Interface column `lldp`, key `enable`: "If not specified,
  LLDP will be disabled by default" - and sends and receives together once enabled
  (`ovs-vsctl set Interface eth0 lldp:enable=true`; 30 s, TTL 120). So a Xen bridge is silent
  unless configured, then LLDP `both`; CDP is refused by the topology.
- The physical switch (a Catalyst-like box): CDP and/or LLDP, both ways, on each port it was
  given - its name, the port's interface name (`Gi1/0/7`), native VLAN, MTU, management
  address.
A received CDP/LLDP frame is never switched on (802.1Q filters 01:80:c2:00:00:0e; ESXi and
OVS consume CDP too): the agent counts it, learns it when listening, ignores it otherwise.
A neighbour expires when its hold time passes without a refresh (read lazily: a neighbour
table costs nothing between frames); a TTL of 0 removes it at once (LLDP shutdown).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from netsim.errors import ConfigError, FrameError
from netsim.wire.discovery import (
    CDP_CAP_SWITCH,
    LLDP_CAP_BRIDGE,
    Neighbour,
    cdp_frame,
    is_discovery,
    lldp_frame,
    parse_neighbour,
)

PROTOCOLS = ("cdp", "lldp")
OPERATIONS = ("none", "listen", "advertise", "both")
#: how often each protocol advertises and how long a neighbour is kept (ESXi, Cisco IOS and
#: Open vSwitch defaults: CDP timer 60 s / holdtime 180 s; LLDP msgTxInterval 30 s x hold 4)
INTERVAL_S = {"cdp": 60.0, "lldp": 30.0}
HOLD_S = {"cdp": 180, "lldp": 120}
#: most neighbours kept per port; beyond it new ones are discarded and counted (802.1AB's
#: tooManyNeighbors): a flood of forged announcements cannot grow the table
MAX_NEIGHBOURS = 32
NS = 1_000_000_000


@dataclass(frozen=True)
class DiscoveryConfig:
    """Which protocols a port speaks and how (vSphere `LinkDiscoveryProtocolConfig`;
    a physical switch may run both protocols, a host switch one)."""

    protocols: tuple[str, ...] = ("cdp",)
    operation: str = "listen"

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocols", tuple(self.protocols))
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise ConfigError(f"discovery protocol {p!r} is not one of {', '.join(PROTOCOLS)}")
        op = "none" if self.operation == "down" else self.operation
        if op not in OPERATIONS:
            raise ConfigError(f"discovery operation {self.operation!r} is not one of "
                              f"{', '.join(OPERATIONS)} (or down)")
        object.__setattr__(self, "operation", op)

    @property
    def listens(self) -> bool:
        """True when received announcements are learned."""
        return self.operation in ("listen", "both")

    @property
    def advertises(self) -> bool:
        """True when this port sends announcements."""
        return self.operation in ("advertise", "both")

    def describe(self) -> str:
        """`cdp listen`, `cdp+lldp both`."""
        return f"{'+'.join(self.protocols)} {self.operation}"


@dataclass(frozen=True)
class Identity:
    """What a port says about its device in its announcements."""

    system: str  # host or switch name
    port: str  # the interface as its device names it (vmnic0, eth0, Gi1/0/7)
    mac: bytes  # the source MAC (and LLDP chassis ID)
    platform: str = "VMware ESX"
    software: str = "Releasebuild"
    cdp_capabilities: int = CDP_CAP_SWITCH
    lldp_capabilities: int = LLDP_CAP_BRIDGE
    mgmt: str | None = None
    port_description: str = ""


@dataclass
class Learned:
    """A neighbour heard on a port, until `expires_ns`."""

    neighbour: Neighbour
    first_ns: int
    last_ns: int
    expires_ns: int


@dataclass
class DiscoveryStats:
    """What an agent sent and received."""

    tx: int = 0
    rx: int = 0
    ignored: int = 0  # received while not listening (or the other protocol): consumed
    malformed: int = 0
    expired: int = 0
    too_many: int = 0  # new neighbours discarded with the table full (MAX_NEIGHBOURS)

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return dict(self.__dict__)


@dataclass
class LinkDiscovery:
    """The CDP/LLDP agent of one port (an uplink, a physical switch port).

    `receive(frame)` is the switch's hook: True (frame consumed) for any CDP/LLDP frame.
    `run(clock)` advertises while the configuration says so; `configure` changes the
    protocol or operation at run time (a new advertisement goes out at once when it starts
    advertising or changes protocol, as 802.1AB's somethingChangedLocal does).
    """

    port: Any  # netsim.dataplane.port.Port
    identity: Identity
    config: DiscoveryConfig
    clock: Any
    #: the VLAN and MTU to advertise, read when each announcement is built
    vlan_of: Callable[[], int | None] = lambda: None
    mtu_of: Callable[[], int | None] = lambda: None
    #: starts a coroutine on the fabric (set by whoever runs the agent)
    spawn: Callable[[Any], None] | None = None
    neighbours: dict[tuple[str, str, str], Learned] = field(default_factory=dict)
    stats: DiscoveryStats = field(default_factory=DiscoveryStats)
    _generation: int = 0

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, frame: bytes) -> bool:
        """Consume a CDP/LLDP frame that arrived on the port (True); False for other frames."""
        if not is_discovery(frame):
            return False
        try:
            n = parse_neighbour(frame)
        except FrameError:
            self.stats.malformed += 1
            self.port.counters.drop("malformed")
            return True
        if n is None:  # the CDP group, but not a CDP PDU (VTP, DTP, PAgP): not ours to switch
            self.stats.ignored += 1
            return True
        if not self.config.listens or n.protocol not in self.config.protocols:
            self.stats.ignored += 1
            return True
        self.stats.rx += 1
        now = self.clock.now_ns()
        key = (n.protocol, n.chassis, n.port)
        if n.ttl == 0:
            self.neighbours.pop(key, None)
            return True
        old = self.neighbours.get(key)
        if old is None and len(self.neighbours) >= MAX_NEIGHBOURS:
            self.current(now)  # make room from the expired ones first
            if len(self.neighbours) >= MAX_NEIGHBOURS:
                self.stats.too_many += 1
                return True
        self.neighbours[key] = Learned(n, old.first_ns if old else now, now, now + n.ttl * NS)
        return True

    def current(self, now_ns: int | None = None) -> list[Learned]:
        """The neighbours whose hold time has not run out, oldest first; expired ones go."""
        now = self.clock.now_ns() if now_ns is None else now_ns
        for key in [k for k, v in self.neighbours.items() if v.expires_ns <= now]:
            del self.neighbours[key]
            self.stats.expired += 1
        return sorted(self.neighbours.values(), key=lambda v: v.first_ns)

    # -- sending -----------------------------------------------------------------------------
    def frames(self, protocols: Iterable[str] | None = None) -> list[bytes]:
        """The announcements this port sends now, one per protocol (default: all spoken)."""
        ident, out = self.identity, []
        vlan, mtu = self.vlan_of(), self.mtu_of()
        for proto in self.config.protocols if protocols is None else protocols:
            if proto == "cdp":
                out.append(cdp_frame(ident.mac, system=ident.system, port=ident.port,
                                     ttl=HOLD_S["cdp"], platform=ident.platform,
                                     software=ident.software,
                                     capabilities=ident.cdp_capabilities, mgmt=ident.mgmt,
                                     vlan=vlan, mtu=mtu))
            else:
                out.append(lldp_frame(ident.mac, system=ident.system, port=ident.port,
                                      ttl=HOLD_S["lldp"], description=ident.port_description,
                                      system_description=ident.platform,
                                      capabilities=ident.lldp_capabilities, mgmt=ident.mgmt,
                                      vlan=vlan, mtu=mtu))
        return out

    def send_now(self, protocols: Iterable[str] | None = None) -> int:
        """Send the announcements once, if the link is up; how many went out."""
        if not self.port.link_up:
            return 0
        sent = 0
        for f in self.frames(protocols):
            if self.port.transmit(f):
                sent += 1
        self.stats.tx += sent
        return sent

    def start(self) -> None:
        """Begin advertising (if the configuration says so) through `spawn`."""
        self._generation += 1
        if self.config.advertises and self.spawn is not None:
            self.spawn(self._advertise(self._generation))

    def configure(self, config: DiscoveryConfig) -> None:
        """Change protocol/operation now: stop or (re)start advertising; neighbours of a
        protocol no longer spoken, or all of them when no longer listening, are forgotten."""
        if not isinstance(config, DiscoveryConfig):
            raise ConfigError(f"{self.port.name}: discovery must be a DiscoveryConfig")
        if config == self.config:
            return
        self.config = config
        for key in [k for k in self.neighbours
                    if not config.listens or k[0] not in config.protocols]:
            del self.neighbours[key]
        self.start()

    async def _advertise(self, generation: int) -> None:
        """Send each protocol at once, then every its interval, on the clock, deadline by
        deadline, until reconfigured."""
        now = self.clock.now_ns()
        due = {p: now for p in self.config.protocols}
        while generation == self._generation:
            now = self.clock.now_ns()
            ready = [p for p, t in due.items() if t <= now]
            if ready:
                self.send_now(ready)
                for p in ready:
                    due[p] += int(INTERVAL_S[p] * NS)
            wait = min(due.values()) - self.clock.now_ns()
            if wait > 0:
                await self.clock.sleep(wait / NS)
            else:
                await asyncio.sleep(0)


@dataclass(frozen=True)
class NeighbourRow:
    """One line of a neighbour table: a local port and what it hears."""

    device: str  # the host or physical switch the port belongs to
    port: str  # local port (vmnic0, Gi1/0/7)
    config: str  # `cdp listen`
    protocol: str
    system: str  # the neighbour's name (its chassis ID when it sends none, as Open vSwitch)
    remote_port: str
    vlan: int | None
    mtu: int | None
    mgmt: str | None
    platform: str
    hold_s: int  # seconds until it expires

    def as_dict(self) -> dict[str, Any]:
        """For JSON (the live view's /api/neighbors)."""
        return dict(self.__dict__)


def neighbour_rows(agents: Iterable[tuple[str, LinkDiscovery]],
                   now_ns: int | None = None) -> list[NeighbourRow]:
    """The table of every agent's current neighbours; a port with none shows one empty row
    (so a listening uplink that hears nothing is visible)."""
    rows: list[NeighbourRow] = []
    for device, agent in agents:
        now = agent.clock.now_ns() if now_ns is None else now_ns
        heard = agent.current(now)
        base = dict(device=device, port=agent.identity.port, config=agent.config.describe())
        if not heard:
            rows.append(NeighbourRow(**base, protocol="", system="", remote_port="", vlan=None,
                                     mtu=None, mgmt=None, platform="", hold_s=0))
        for lr in heard:
            n = lr.neighbour
            rows.append(NeighbourRow(**base, protocol=n.protocol, system=n.system or n.chassis,
                                     remote_port=n.port, vlan=n.vlan, mtu=n.mtu, mgmt=n.mgmt,
                                     platform=n.platform,
                                     hold_s=max(0, -(-(lr.expires_ns - now) // NS))))
    return rows


def with_operation(config: DiscoveryConfig, *, protocol: str | None = None,
                   operation: str | None = None) -> DiscoveryConfig:
    """`config` with a new protocol and/or operation (a scenario step's change)."""
    return replace(config, protocols=(protocol,) if protocol else config.protocols,
                   operation=operation or config.operation)
