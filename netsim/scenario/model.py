"""Scenario files: a topology, a timeline of traffic and events, and expectations — validated once.

```yaml
name: vlan-isolation
topology: ../xen-vlans.yaml        # relative to this file
capture: [vif1.0, vif3.0, xen1/eth0]   # or "all"; one pcapng per port in the output directory
duration: 2s                       # optional: default = last step + the longest expectation window
steps:
  - at: 100ms
    send: {from: vif1.0, count: 10, rate: 1000/s,
           frame: {eth: {src: "00:16:3e:00:05:01"}, vlan: 5, ipv4: {src: 10.0.5.1, dst: 10.0.5.2},
                   udp: {dport: 53}, payload: 32}}
  - at: 1s
    replay: {pcap: trace.pcapng, into: vif1.0, speed: 10x}   # original | 10x | 0.5x | max
    # a Linux cooked (SLL/SLL2) or raw IP capture: dlt_ethernet: true, dst_mac: M [, src_mac: M]
  - {at: 2s, link: {port: xen1/eth0, state: down}}
  - {at: 2s, port_group: {name: vlan5, host: xen1, vlan: 6, security: {promiscuous: true}}}
  - {at: 3s, flush_mac: {switch: xen1/xenbr0}}                # or {} for every switch
  - {at: 4s, switch: {name: esx1/vSwitch0, mtu: 9000, teaming: {active: [vmnic1],
                      standby: [vmnic0]}, discovery: {protocol: lldp, operation: both}}}
  - {at: 5s, port: {name: esx1/web.eth0, blocked: true}}      # or mtu: N
  - {at: 6s, port_group: {name: web, host: esx1, blocked: false, mtu: 1400,
                          teaming: {policy: failover, active: [vmnic0]}}}
  - {at: 4s, vif: {port: vif1.0, locking_mode: locked, ipv4_allowed: [10.0.5.1]}}  # as xe
expect:
  - arrives: {at: vif2.0, match: "ether src 00:16:3e:00:05:01", tagged: false,
              after: 100ms, within: 50ms, count: 10}          # or min: 1 (the default)
  - never:   {at: vif3.0, match: "ether src 00:16:3e:00:05:01"}
  - counter: {port: xen1/eth0, name: drops.link-down, ge: 1}  # or eq:; checked at `at` or the end
  - ping:    {from: vm1, to: vm2, at: 1s, succeeds: true, wait: 1s}
```

Times are `500ns`, `10us`, `1.5ms`, `2s`, `1m`, `1h` or plain seconds. `load_scenario` checks the
file's shape, frames, filters and times, raising `ScenarioError` as `file:line: key: message`;
`Scenario.check(fabric)` then checks every port, VM, switch and port group it names against the
built fabric, still before anything runs. Nothing in a file is evaluated as code: frames are
declarative; Python callers may name frames built with Scapy (`load_scenario(path,
frames={"syn": Ether()/IP()/TCP()})`, then `frame: syn` in the file) or pass packets to
`netsim.scenario.pytest_plugin`'s `send`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netsim.dataplane.impair import Impairment, parse_impairment
from netsim.errors import ConfigError, ScenarioError
from netsim.lab.yamlsrc import SourceMap, load_yaml
from netsim.wire.filters import Filter, FilterError, compile_filter
from netsim.wire.framespec import SpecError, parse_spec
from netsim.wire.pcapread import EthernetRewrite, capture_interfaces

PathT = tuple[str | int, ...]
NS = 1_000_000_000
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": NS, "m": 60 * NS,
          "h": 3600 * NS}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(k|M)?\s*(?:/s|pps|fps)\s*$")
_SPEED = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x\s*$")
#: the longest time a scenario can name: virtual time is a signed 64-bit count of nanoseconds
MAX_NS = 2**63 - 1
COUNTER_NAMES = ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "drops")


def parse_duration(value: Any) -> int:
    """`"1.5ms"` / `2` (seconds) → nanoseconds; ValueError if it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        ns = value * NS
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ValueError(f"{value!r} is not a duration (like 500us, 10ms, 2s, 1m)")
        ns = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not math.isfinite(ns) or ns > MAX_NS:
        raise ValueError(f"{value!r} is beyond the longest duration (2^63 ns, about "
                         "292 years)")
    return round(ns)


def fmt_ns(ns: int) -> str:
    """Nanoseconds → a short readable duration (`1.5ms`)."""
    if ns == 0:
        return "0s"
    for unit, size in (("s", NS), ("ms", 1_000_000), ("us", 1_000)):
        if ns >= size:
            return f"{ns / size:g}{unit}"
    return f"{ns}ns"


# ------------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class Step:
    """Something the timeline does at `at_ns` (ns after the start); `path` locates it."""

    at_ns: int
    path: PathT


@dataclass(frozen=True)
class Send(Step):
    """Send `count` copies of `frame` from `port`, `interval_ns` apart."""

    port: str
    frame: bytes
    count: int = 1
    interval_ns: int = 0

    @property
    def end_ns(self) -> int:
        return self.at_ns + max(0, self.count - 1) * self.interval_ns


@dataclass(frozen=True)
class Replay(Step):
    """Replay a capture into a port (`into`), or each frame into the port named like its pcapng
    interface (`into` None). `speed` scales the original timing; None = as fast as possible."""

    pcap: Path
    into: str | None
    speed: float | None
    #: non-Ethernet packets (Linux cooked, raw IP) made Ethernet, as `tcprewrite --dlt=enet`
    rewrite: EthernetRewrite | None = None
    #: how an error tells the user to name the port: the file's key, or the CLI's flag
    into_hint: str = "`into:`"


@dataclass(frozen=True)
class VifEvent(Step):
    """Change a XenServer VIF's locking and/or QoS (`xe vif-param-set`); what the step does
    not name stays as it is."""

    port: str
    locking: Any = None  # a VifLocking, or None = unchanged
    qos: Any = None  # a VifQos, or None = unchanged
    clear_qos: bool = False  # `qos_algorithm_type: ""`: no rate limit any more


@dataclass(frozen=True)
class LinkEvent(Step):
    """Bring a port or cable up or down."""

    target: str
    up: bool


@dataclass(frozen=True)
class PortGroupEvent(Step):
    """Change a port group's VLAN, security policy, blocking, MTU and/or teaming override
    (its ports follow at once)."""

    name: str
    host: str | None
    switch: str | None
    vlan: int | None
    security: Mapping[str, bool] | None
    blocked: bool | None = None
    mtu: int | None = None
    teaming: Mapping[str, Any] | None = None  # see `SwitchEvent.teaming`
    #: other PortGroup fields to replace (traffic_rules, default_locking_mode), as values
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SwitchEvent(Step):
    """Change a host switch at run time: its MTU (vSS `mtu` / vDS `maxMtu`), its NIC teaming
    (keys given replace the current ones; `active`/`standby` together set the failover
    order) and its CDP/LLDP setting (`protocol`, `operation`: none listen advertise both)."""

    switch: str
    mtu: int | None = None
    teaming: Mapping[str, Any] | None = None
    discovery: Mapping[str, str] | None = None


@dataclass(frozen=True)
class PortEvent(Step):
    """Block or unblock one port (vSphere `DVPortSetting.blocked`) and/or change its MTU."""

    port: str
    blocked: bool | None = None
    mtu: int | None = None


@dataclass(frozen=True)
class ImpairEvent(Step):
    """Change (tc qdisc change) or clear the impairment of the frames a port sends (`out`),
    receives (`in`) or both, or sends into its cable (`cable`), from now on; frames in flight
    keep their times."""

    target: str
    direction: str
    impairment: Impairment | None  # None = clear
    key: str = "port"


@dataclass(frozen=True)
class LagEvent(Step):
    """Change a LAG, bond or port-channel's settings live (`xe bond-set-mode`, a vDS LAG
    edit, `lacp rate fast`): keys of `netsim.dataplane.lag.LagConfig`."""

    target: str
    changes: Mapping[str, Any]


@dataclass(frozen=True)
class FlushMac(Step):
    """Flush a switch's MAC table (every switch's when `switch` is None)."""

    switch: str | None


@dataclass(frozen=True)
class MirrorEvent(Step):
    """Turn a port mirroring session on or off (`VMwareVspanSession.enabled`): `switch` is
    the path of the switch it runs on (`esx1/dvs1`)."""

    switch: str
    session: str
    enabled: bool


@dataclass(frozen=True)
class MoveVm(Step):
    """Live-migrate a VM to another host of the lab (vMotion/XenMotion): same MACs, plugged into
    the destination's switch and port group of the same names, then a RARP per NIC."""

    vm: str
    to: str
    key: str = "move_vm"  # how the file spelled the step (move_vm or migrate)


@dataclass(frozen=True)
class Expectation:
    """Something that must hold; `name` is what the report shows."""

    name: str
    path: PathT


@dataclass(frozen=True)
class Arrives(Expectation):
    """Frames matching `filter` leave the switch through `port` (towards the guest for a VM port,
    onto the wire for a PIF or physical port) in [`start_ns`, `end_ns`) (None = to the end).
    `count` exact, or at least `min_count`; `never` = none may arrive."""

    port: str
    filter: Filter
    start_ns: int = 0
    end_ns: int | None = None
    count: int | None = None
    min_count: int = 1
    never: bool = False
    #: bounds on the spread (standard deviation) of the matching frames' inter-arrival times
    spread_ge_ns: int | None = None
    spread_le_ns: int | None = None


@dataclass(frozen=True)
class CounterCheck(Expectation):
    """A port counter (`rx_frames`, `tx_bytes`, `drops`, `drops.<reason>`) at `at_ns` (None = the
    end) equals `eq` or is at least `ge`."""

    port: str
    counter: str
    eq: int | None
    ge: int | None
    at_ns: int | None


@dataclass(frozen=True)
class PingCheck(Expectation):
    """At `at_ns`, VM `src` pings `dst` (a VM or an IPv4 address); it must (not) be answered
    within `wait_ns`."""

    src: str
    dst: str
    at_ns: int
    succeeds: bool
    wait_ns: int
    #: bounds on the round-trip time of an answered ping
    rtt_ge_ns: int | None = None
    rtt_le_ns: int | None = None


@dataclass
class Scenario:
    """A validated scenario (see the module docstring)."""

    name: str
    source: str
    topology: Path | None
    steps: list[Step]
    expectations: list[Expectation]
    capture: list[str] | str | None = None
    duration_ns: int | None = None
    smap: SourceMap = field(default_factory=lambda: SourceMap("<scenario>"))

    @property
    def end_ns(self) -> int:
        """When the run stops: `duration`, or the last step / expectation window, plus 10 ms."""
        if self.duration_ns is not None:
            return self.duration_ns
        end = 0
        for s in self.steps:
            end = max(end, s.end_ns if isinstance(s, Send) else s.at_ns)
        for e in self.expectations:
            if isinstance(e, Arrives):
                end = max(end, e.end_ns or e.start_ns)
            elif isinstance(e, CounterCheck) and e.at_ns is not None:
                end = max(end, e.at_ns)
            elif isinstance(e, PingCheck):
                end = max(end, e.at_ns + e.wait_ns)
        return end + 10_000_000

    def error(self, path: PathT, message: str) -> ScenarioError:
        """`file:line: key: message` as a ScenarioError."""
        err = self.smap.error(path, message, ScenarioError)
        assert isinstance(err, ScenarioError)
        return err

    def check(self, fabric: Any, *, pingable: Sequence[str] | None = None) -> None:
        """Check every name this scenario uses against a built fabric (before running).

        `pingable`: the VMs that can ping (have an address); None = pings are not available.
        """
        from netsim.dataplane.port import Port, Vif
        from netsim.dataplane.switch import Bridge, StandardSwitch
        from netsim.lab.fabric import Link, Vm

        def lookup(name: str, path: PathT, kinds: tuple[type, ...], what: str) -> Any:
            try:
                obj = fabric[name]
            except KeyError as exc:
                raise self.error(path, str(exc).strip("'\"")) from None
            if not isinstance(obj, kinds):
                raise self.error(path, f"{name!r} is a {type(obj).__name__}, not {what}")
            return obj

        if isinstance(self.capture, list):
            for i, name in enumerate(self.capture):
                lookup(name, ("capture", i), (Port, Vm, Link), "a port, VM or cable")
        for s in self.steps:
            if isinstance(s, Send):
                lookup(s.port, (*s.path, "send", "from"), (Port, Vm), "a port or VM")
            elif isinstance(s, Replay) and s.into is not None:
                lookup(s.into, (*s.path, "replay", "into"), (Port, Vm), "a port or VM")
            elif isinstance(s, Replay):
                self._check_interfaces(fabric, s, (Port, Vm))
            elif isinstance(s, LinkEvent):
                lookup(s.target, (*s.path, "link", "port"), (Port, Link), "a port or cable")
            elif isinstance(s, ImpairEvent):
                port = lookup(s.target, (*s.path, "impair", s.key), (Port,), "a port")
                if s.direction == "cable" and port.link is None:
                    raise self.error((*s.path, "impair", s.key), f"{s.target} has no cable")
            elif isinstance(s, LagEvent):
                from netsim.dataplane.lag import LagPort

                lookup(s.target, (*s.path, "lag", "port"), (LagPort,), "a LAG, bond or "
                       "port-channel")
            elif isinstance(s, FlushMac) and s.switch is not None:
                lookup(s.switch, (*s.path, "flush_mac", "switch"), (Bridge,), "a switch")
            elif isinstance(s, MirrorEvent):
                sw = lookup(s.switch, (*s.path, "mirror", "switch"), (Bridge,), "a switch")
                if s.session not in sw.mirror_sessions:
                    raise self.error((*s.path, "mirror", "session"), f"no mirror session "
                                     f"{s.session!r} on {s.switch} (sessions: "
                                     f"{', '.join(sorted(sw.mirror_sessions)) or 'none'})")
            elif isinstance(s, MoveVm):
                lookup(s.vm, (*s.path, s.key, "vm"), (Vm,), "a VM")
                if s.to not in fabric.hosts:
                    raise self.error((*s.path, s.key, "to"), f"no host {s.to!r} (hosts: "
                                     f"{', '.join(sorted(fabric.hosts))})")
            elif isinstance(s, VifEvent):
                lookup(s.port, (*s.path, "vif", "port"), (Vif,), "a XenServer VIF")
            elif isinstance(s, PortGroupEvent):
                if s.switch is not None:
                    lookup(s.switch, (*s.path, "port_group", "switch"), (StandardSwitch,),
                           "a standard switch")
                sw, _ = find_port_group(fabric, s, self)
                if s.teaming is not None:
                    self._check_team(sw, s.teaming, (*s.path, "port_group", "teaming"))
            elif isinstance(s, SwitchEvent):
                sw = lookup(s.switch, (*s.path, "switch", "name"), (StandardSwitch,),
                            "a host switch")
                if s.teaming is not None:
                    self._check_team(sw, s.teaming, (*s.path, "switch", "teaming"))
            elif isinstance(s, PortEvent):
                port = lookup(s.port, (*s.path, "port", "name"), (Port, Vm), "a port or VM")
                if isinstance(port, Vm):
                    port = port.ports[0]
                if port.switch is None:
                    raise self.error((*s.path, "port", "name"), f"{s.port} is on no switch")
        for e in self.expectations:
            if isinstance(e, Arrives):
                kind = "never" if e.never else "arrives"
                lookup(e.port, (*e.path, kind, "at"), (Port, Vm), "a port or VM")
            elif isinstance(e, CounterCheck):
                lookup(e.port, (*e.path, "counter", "port"), (Port, Vm), "a port or VM")
            elif isinstance(e, PingCheck):
                pp = (*e.path, "ping")
                lookup(e.src, (*pp, "from"), (Vm,), "a VM")
                if pingable is None:
                    raise self.error(pp, "ping needs a topology file (VMs with addresses)")
                if e.src not in pingable:
                    raise self.error((*pp, "from"), f"VM {e.src} has no IPv4 address")
                if e.dst not in pingable:
                    try:
                        import ipaddress
                        ipaddress.IPv4Address(e.dst)
                    except ValueError:
                        raise self.error((*pp, "to"), f"{e.dst!r} is neither a VM with an "
                                         "address nor an IPv4 address") from None


    def _check_team(self, sw: Any, teaming: Mapping[str, Any], path: PathT) -> None:
        """Every uplink a teaming change names is an uplink of `sw`."""
        names = [u.name for u in sw.uplinks]
        for key in ("active", "standby"):
            for i, n in enumerate(teaming.get(key, ())):
                if n not in names:
                    raise self.error((*path, key, i), f"{n} is not an uplink of {sw.name} "
                                     f"(uplinks: {', '.join(names) or 'none'})")

    def _check_interfaces(self, fabric: Any, s: Replay, kinds: tuple[type, ...]) -> None:
        """Every interface of the capture names a port or VM here: else one error naming all."""
        bad: list[str] = []
        for name in capture_interfaces(s.pcap, rewrite=s.rewrite):
            if name is None:
                bad.append("a classic pcap names no interface")
                continue
            try:
                obj = fabric[name]
            except KeyError:
                bad.append(f"{name!r} (no such port)")
                continue
            if not isinstance(obj, kinds):
                bad.append(f"{name!r} (a {type(obj).__name__}, not a port or VM)")
        if bad:
            msg = (f"capture interfaces map to no port here: {', '.join(bad)}; give "
                   f"{s.into_hint} (the port every frame enters at)")
            if s.into_hint.startswith("--"):  # from the command line: no file to point into
                raise ScenarioError(f"{s.pcap}: {msg}")
            raise self.error((*s.path, "replay"), f"{s.pcap.name}: {msg}")


def find_port_group(fabric: Any, ev: PortGroupEvent, scn: Scenario | None = None) -> Any:
    """The (switch, PortGroup) a port-group event names; ScenarioError if none or several."""
    from netsim.dataplane.switch import StandardSwitch

    if ev.switch is not None:
        switches = [fabric[ev.switch]]
    else:
        hosts = [fabric.hosts[ev.host]] if ev.host in fabric.hosts else list(fabric.hosts.values())
        switches = [sw for h in hosts for sw in h.switches.values()]
    found = [(sw, sw.port_groups[ev.name]) for sw in switches
             if isinstance(sw, StandardSwitch) and ev.name in sw.port_groups]
    if len(found) != 1:
        where = f" on {ev.host}" if ev.host else ""
        msg = (f"no port group {ev.name!r}{where}" if not found else
               f"port group {ev.name!r} is on several switches "
               f"({', '.join(sw.name for sw, _ in found)}); name the switch")
        if scn is None:
            raise ScenarioError(msg)
        raise scn.error((*ev.path, "port_group", "name"), msg)
    return found[0]


# ------------------------------------------------------------------------------------ the loader
class _Reader:
    def __init__(self, smap: SourceMap, base: Path) -> None:
        self.smap = smap
        self.base = base
        self.frames: dict[str, Any] = {}

    def named_frame(self, name: str, path: PathT) -> bytes:
        if name not in self.frames:
            known = ", ".join(sorted(self.frames)) or "none were given"
            raise self.fail(path, f"no frame named {name!r} (named frames come from Python: "
                            f"load_scenario(..., frames={{...}}); known: {known})")
        value = self.frames[name]
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        from netsim.wire.frame import from_scapy  # the one place Scapy objects become bytes
        return from_scapy(value)

    def fail(self, path: PathT, message: str) -> ScenarioError:
        err = self.smap.error(path, message, ScenarioError)
        assert isinstance(err, ScenarioError)
        return err

    def mapping(self, value: Any, path: PathT, allowed: Sequence[str],
                required: Sequence[str] = ()) -> Mapping[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail((*path, key), f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                raise self.fail(path, f"missing key {key!r}")
        return value

    def name(self, value: Any, path: PathT) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a name, got {value!r}")
        return value.strip()

    def mac(self, value: Any, path: PathT) -> bytes:
        from netsim.errors import FrameError
        from netsim.wire.frame import mac_to_bytes
        try:
            return mac_to_bytes(str(value))
        except FrameError as exc:
            raise self.fail(path, str(exc)) from None

    def duration(self, value: Any, path: PathT) -> int:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def integer(self, value: Any, path: PathT, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(path, f"expected an integer {lo}..{hi}, got {value!r}")
        return value

    def boolean(self, value: Any, path: PathT) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {value!r}")
        return value

    def filter(self, value: Any, path: PathT, tagged: Any, tpath: PathT) -> Filter:
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise self.fail(path, f"expected a filter string like \"vlan 5 and udp\", "
                            f"got {value!r}")
        text = value
        if tagged is not None:
            clause = "tagged" if self.boolean(tagged, tpath) else "untagged"
            text = f"({value}) and {clause}" if value.strip() else clause
        try:
            return compile_filter(text)
        except FilterError as exc:
            raise self.fail(path, str(exc)) from None


def load_scenario(path: str | Path, *, frames: Mapping[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file (see the module docstring).

    `frames`: named frames for `send.frame: <name>` — Scapy packets or bytes, given from Python
    (a file itself only holds declarative frames; nothing in it is evaluated)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not a text file ({exc.reason})") from exc
    return parse_scenario(text, str(path), base=path.parent, frames=frames)


def parse_scenario(text: str, source: str = "scenario.yaml", *, base: Path | None = None,
                   frames: Mapping[str, Any] | None = None) -> Scenario:
    """Validate scenario text; relative paths resolve against `base` (default: cwd); `frames`
    as for `load_scenario`."""
    data, smap = load_yaml(text, source, ScenarioError)
    r = _Reader(smap, base or Path("."))
    r.frames = dict(frames or {})
    top = r.mapping(data, (), ("name", "topology", "capture", "duration", "steps",
                               "expect", "description"))
    name = r.name(top.get("name", Path(source).stem), ("name",))
    topology = None
    if "topology" in top:
        tpath = Path(r.name(top["topology"], ("topology",)))
        topology = tpath if tpath.is_absolute() else r.base / tpath
        if not topology.is_file():
            raise r.fail(("topology",), f"no topology file {str(topology)!r}")
    capture: list[str] | str | None = None
    if "capture" in top:
        cap = top["capture"]
        if cap == "all":
            capture = "all"
        elif isinstance(cap, list) and cap:
            capture = [r.name(c, ("capture", i)) for i, c in enumerate(cap)]
        else:
            raise r.fail(("capture",), "expected \"all\" or a list of port names")
    duration = r.duration(top["duration"], ("duration",)) if "duration" in top else None
    steps_raw = top.get("steps") or []
    if not isinstance(steps_raw, list):
        raise r.fail(("steps",), "expected a list of steps")
    steps = [_step(r, raw, ("steps", i)) for i, raw in enumerate(steps_raw)]
    exp_raw = top.get("expect") or []
    if not isinstance(exp_raw, list):
        raise r.fail(("expect",), "expected a list of expectations")
    expectations = [_expectation(r, raw, ("expect", i)) for i, raw in enumerate(exp_raw)]
    scn = Scenario(name=name, source=source, topology=topology, steps=steps,
                   expectations=expectations, capture=capture, duration_ns=duration,
                   smap=smap)
    if duration is not None:
        for s in steps:
            if s.at_ns > duration:
                raise r.fail((*s.path, "at"), f"step at {fmt_ns(s.at_ns)} is after the end "
                             f"(duration {fmt_ns(duration)})")
    return scn


_STEP_KINDS = ("send", "replay", "link", "port_group", "flush_mac", "move_vm", "migrate",
               "impair", "lag", "switch", "port", "mirror", "vif")


def _step(r: _Reader, raw: Any, path: PathT) -> Step:
    m = r.mapping(raw, path, ("at", *_STEP_KINDS))
    kinds = [k for k in _STEP_KINDS if k in m]
    if len(kinds) != 1:
        raise r.fail(path, f"a step does exactly one of: {', '.join(_STEP_KINDS)}"
                     + (f" (this one has {', '.join(kinds)})" if kinds else ""))
    kind = kinds[0]
    at = r.duration(m.get("at", 0), (*path, "at"))
    kp = (*path, kind)
    body = m[kind]
    if kind == "send":
        b = r.mapping(body, kp, ("from", "frame", "count", "rate", "interval"), ("from", "frame"))
        if isinstance(b["frame"], str):
            frame = r.named_frame(b["frame"], (*kp, "frame"))
        else:
            try:
                frame = parse_spec(b["frame"], ()).build()
            except SpecError as exc:
                raise r.fail((*kp, "frame", *exc.path), exc.message) from None
        count = r.integer(b.get("count", 1), (*kp, "count"), 1, 10_000_000)
        interval = 0
        if "rate" in b and "interval" in b:
            raise r.fail(kp, "give rate or interval, not both")
        if "rate" in b:
            interval = _rate_interval(r, b["rate"], (*kp, "rate"))
        elif "interval" in b:
            interval = r.duration(b["interval"], (*kp, "interval"))
        return Send(at, path, r.name(b["from"], (*kp, "from")), frame, count, interval)
    if kind == "replay":
        b = r.mapping(body, kp, ("pcap", "into", "speed", "dlt_ethernet", "src_mac", "dst_mac"),
                      ("pcap",))
        pcap = Path(r.name(b["pcap"], (*kp, "pcap")))
        pcap = pcap if pcap.is_absolute() else r.base / pcap
        into = r.name(b["into"], (*kp, "into")) if "into" in b else None
        rewrite = None
        if r.boolean(b.get("dlt_ethernet", False), (*kp, "dlt_ethernet")):
            rewrite = EthernetRewrite(*(r.mac(b[k], (*kp, k)) if b.get(k) is not None else None
                                        for k in ("src_mac", "dst_mac")))
        elif "src_mac" in b or "dst_mac" in b:
            raise r.fail(kp, "src_mac/dst_mac go with dlt_ethernet: true")
        return Replay(at, path, pcap, into, _speed(r, b.get("speed", "original"), (*kp, "speed")),
                      rewrite)
    if kind == "link":
        b = r.mapping(body, kp, ("port", "state"), ("port", "state"))
        state = b["state"]
        if state not in ("up", "down"):
            raise r.fail((*kp, "state"), f"expected up or down, got {state!r}")
        return LinkEvent(at, path, r.name(b["port"], (*kp, "port")), state == "up")
    if kind == "port_group":
        b = r.mapping(body, kp, ("name", "host", "switch", "vlan", "security", "blocked", "mtu",
                                 "teaming", "traffic_rules", "default_locking_mode"), ("name",))
        vlan = r.integer(b["vlan"], (*kp, "vlan"), 0, 4095) if "vlan" in b else None
        security = None
        if "security" in b:
            s = r.mapping(b["security"], (*kp, "security"),
                          ("promiscuous", "mac_changes", "forged_transmits"))
            security = {k: r.boolean(v, (*kp, "security", k)) for k, v in s.items()}
        blocked = r.boolean(b["blocked"], (*kp, "blocked")) if "blocked" in b else None
        mtu = r.integer(b["mtu"], (*kp, "mtu"), 68, 9216) if "mtu" in b else None
        teaming = _teaming_change(r, b["teaming"], (*kp, "teaming")) if "teaming" in b else None
        changes = _policy_changes(r, b, kp)
        if vlan is None and security is None and blocked is None and mtu is None and (
                teaming is None) and not changes:
            raise r.fail(kp, "change something: vlan, security, blocked, mtu, teaming, "
                         "traffic_rules and/or default_locking_mode")
        return PortGroupEvent(at, path, r.name(b["name"], (*kp, "name")),
                              r.name(b["host"], (*kp, "host")) if "host" in b else None,
                              r.name(b["switch"], (*kp, "switch")) if "switch" in b else None,
                              vlan, security, blocked, mtu, teaming, changes)
    if kind == "switch":
        b = r.mapping(body, kp, ("name", "mtu", "teaming", "discovery"), ("name",))
        mtu = r.integer(b["mtu"], (*kp, "mtu"), 68, 9216) if "mtu" in b else None
        teaming = _teaming_change(r, b["teaming"], (*kp, "teaming")) if "teaming" in b else None
        discovery = None
        if "discovery" in b:
            from netsim.dataplane.discovery import OPERATIONS, PROTOCOLS
            d = r.mapping(b["discovery"], (*kp, "discovery"), ("protocol", "operation"))
            if not d:
                raise r.fail((*kp, "discovery"), "give protocol and/or operation")
            if d.get("protocol", "cdp") not in PROTOCOLS:
                raise r.fail((*kp, "discovery", "protocol"), f"expected cdp or lldp, got "
                             f"{d['protocol']!r}")
            if d.get("operation", "none") not in (*OPERATIONS, "down"):
                raise r.fail((*kp, "discovery", "operation"), "expected none (down), listen, "
                             f"advertise or both, got {d['operation']!r}")
            discovery = dict(d)
        if mtu is None and teaming is None and discovery is None:
            raise r.fail(kp, "change something: mtu, teaming and/or discovery")
        return SwitchEvent(at, path, r.name(b["name"], (*kp, "name")), mtu, teaming, discovery)
    if kind == "port":
        b = r.mapping(body, kp, ("name", "blocked", "mtu"), ("name",))
        blocked = r.boolean(b["blocked"], (*kp, "blocked")) if "blocked" in b else None
        mtu = r.integer(b["mtu"], (*kp, "mtu"), 68, 9216) if "mtu" in b else None
        if blocked is None and mtu is None:
            raise r.fail(kp, "change something: blocked and/or mtu")
        return PortEvent(at, path, r.name(b["name"], (*kp, "name")), blocked, mtu)
    if kind == "impair":
        return _impair_step(r, body, at, path, kp)
    if kind == "vif":
        return _vif_step(r, body, at, path, kp)
    if kind == "lag":
        return _lag_step(r, body, at, path, kp)
    if kind == "mirror":
        b = r.mapping(body, kp, ("switch", "session", "enabled"), ("switch", "session",
                                                                    "enabled"))
        return MirrorEvent(at, path, r.name(b["switch"], (*kp, "switch")),
                           r.name(b["session"], (*kp, "session")),
                           r.boolean(b["enabled"], (*kp, "enabled")))
    if kind == "flush_mac":
        b = r.mapping(body, kp, ("switch",))
        return FlushMac(at, path, r.name(b["switch"], (*kp, "switch")) if "switch" in b else None)
    # move_vm / migrate (the same step under the name)
    b = r.mapping(body, kp, ("vm", "to"), ("vm", "to"))
    return MoveVm(at, path, r.name(b["vm"], (*kp, "vm")), r.name(b["to"], (*kp, "to")), kind)


def _vif_step(r: _Reader, body: Any, at: int, path: PathT, kp: PathT) -> VifEvent:
    """`{port: vif1.0, locking_mode: locked, ipv4_allowed: [...], qos_algorithm_type:
    ratelimit, qos_algorithm_params: {kbps: N}}`; `qos_algorithm_type: ""` removes the limit."""
    from netsim.lab import policyspec

    b = r.mapping(body, kp, ("port", *policyspec.VIF_KEYS), ("port",))
    port = r.name(b["port"], (*kp, "port"))
    clear = b.get("qos_algorithm_type") == "" and "qos_algorithm_params" not in b
    rest = {k: v for k, v in b.items() if k != "port" and not (clear and
                                                                k == "qos_algorithm_type")}
    if not rest and not clear:
        raise r.fail(kp, "change something: locking_mode, ipv4_allowed, ipv6_allowed or "
                     "qos_algorithm_type/qos_algorithm_params")
    locking, qos = policyspec.parse_vif_policy(rest, kp, r.fail)
    return VifEvent(at, path, port, locking, qos, clear)


def _policy_changes(r: _Reader, b: Mapping[str, Any], kp: PathT) -> dict[str, Any]:
    """traffic_rules (a new ruleset; `[]` = none) and default_locking_mode of a port group."""
    from netsim.dataplane.filtering import TrafficRuleset
    from netsim.lab import policyspec

    out: dict[str, Any] = {}
    if "traffic_rules" in b:
        rs = policyspec.parse_traffic_rules(b["traffic_rules"], (*kp, "traffic_rules"), r.fail)
        out["traffic_rules"] = rs if rs is not None and rs != TrafficRuleset() else None
    if "default_locking_mode" in b:
        out["default_locking_mode"] = policyspec.parse_locking_default(
            b["default_locking_mode"], (*kp, "default_locking_mode"), r.fail)
    return out
def _lag_step(r: _Reader, body: Any, at: int, path: PathT, kp: PathT) -> LagEvent:
    """`{port: esx1/lag1, mode: lacp|static|active-backup|balance-slb, lacp: active|passive,
    rate: fast|slow, hashing: ALGORITHM, rebalance_interval: MS, lacp_fallback_ab: BOOL}`:
    the settings to change (`xe bond-param-set other-config:lacp-fallback-ab=true`)."""
    from netsim.dataplane.lag import LagConfig

    b = r.mapping(body, kp, ("port", "mode", "lacp", "rate", "hashing", "rebalance_interval",
                             "lacp_fallback_ab"), ("port",))
    names = {"rebalance_interval": "rebalance_interval_ms"}
    changes = {names.get(k, k): v for k, v in b.items() if k != "port"}
    if not changes:
        raise r.fail(kp, "change something: mode, lacp, rate, hashing, rebalance_interval or "
                     "lacp_fallback_ab")
    for k, v in b.items():  # each value checked alone, so the error names its key
        if k != "port":
            try:
                LagConfig(**{names.get(k, k): v})
            except ConfigError as exc:
                raise r.fail((*kp, k), str(exc)) from None
    return LagEvent(at, path, r.name(b["port"], (*kp, "port")), changes)


def _teaming_change(r: _Reader, raw: Any, path: PathT) -> dict[str, Any]:
    """`{policy: port-id|failover|ip-hash|src-mac, active: [..], standby: [..],
    notify_switches: bool, failback: bool}`, any of them."""
    from netsim.dataplane.policy import LoadBalancing

    t = r.mapping(raw, path, ("policy", "active", "standby", "notify_switches", "failback"))
    if not t:
        raise r.fail(path, "give policy, active, standby, notify_switches and/or failback")
    out: dict[str, Any] = {}
    if "policy" in t:
        known = [m.value for m in LoadBalancing]
        if t["policy"] not in known:
            raise r.fail((*path, "policy"), f"expected one of {', '.join(known)}, got "
                         f"{t['policy']!r}")
        out["policy"] = t["policy"]
    for key in ("active", "standby"):
        if key in t:
            names = t[key] if isinstance(t[key], list) else None
            if names is None:
                raise r.fail((*path, key), "expected a list of uplink names")
            out[key] = tuple(r.name(n, (*path, key, i)) for i, n in enumerate(names))
    both = set(out.get("active", ())) & set(out.get("standby", ()))
    if both:
        raise r.fail((*path, "standby"), f"{', '.join(sorted(both))} both active and standby")
    if "active" in out and not out["active"] and "standby" in out:
        raise r.fail((*path, "active"), "teaming needs at least one active uplink")
    for key in ("notify_switches", "failback"):
        if key in t:
            out[key] = r.boolean(t[key], (*path, key))
    return out


def _impair_step(r: _Reader, body: Any, at: int, path: PathT, kp: PathT) -> ImpairEvent:
    """`{port|link: NAME, direction: both|out|in, clear: true}` or the settings
    (`delay: 200ms, loss: 10%`, as `impair:` in a topology) that replace the current ones;
    `cable: NAME` is the direction of NAME's cable that NAME sends into (a `links:` entry)."""
    from netsim.dataplane.impair import IMPAIR_KEYS

    b = r.mapping(body, kp, ("port", "link", "cable", "direction", "clear", *IMPAIR_KEYS))
    keys = [k for k in ("port", "link", "cable") if k in b]
    if len(keys) != 1:
        raise r.fail(kp, "name the port whose link to impair: `port:` (or `link:`), or "
                     "`cable:` for what a port sends into its cable")
    key = keys[0]
    target = r.name(b[key], (*kp, key))
    direction = b.get("direction", "both")
    if direction not in ("both", "out", "in"):
        raise r.fail((*kp, "direction"), f"expected both, out or in, got {direction!r}")
    if key == "cable":
        if "direction" in b:
            raise r.fail((*kp, "direction"), "a cable step impairs what the port sends into "
                         "it; name the other end for the other direction")
        direction = "cable"
    settings = {k: v for k, v in b.items() if k in IMPAIR_KEYS}
    clear = r.boolean(b.get("clear", False), (*kp, "clear"))
    if clear and settings:
        raise r.fail((*kp, "clear"), "clear takes no settings")
    if not clear and not settings:
        raise r.fail(kp, "give settings (delay, loss, ...) or `clear: true`")
    imp = None if clear else parse_impairment(settings, kp, r.fail)
    return ImpairEvent(at, path, target, direction, imp, key)


def _bounds(r: _Reader, value: Any, path: PathT) -> tuple[int | None, int | None]:
    """`{ge: 1ms, le: 5ms}` (either or both) → ns."""
    b = r.mapping(value, path, ("ge", "le"))
    if not b:
        raise r.fail(path, "give ge and/or le")
    ge = r.duration(b["ge"], (*path, "ge")) if "ge" in b else None
    le = r.duration(b["le"], (*path, "le")) if "le" in b else None
    if ge is not None and le is not None and ge > le:
        raise r.fail(path, "ge is above le")
    return ge, le


def _rate_interval(r: _Reader, value: Any, path: PathT) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    else:
        m = _RATE.match(str(value))
        if m is None:
            raise r.fail(path, f"{value!r} is not a rate (like 1000/s, 10kpps)")
        rate = float(m.group(1)) * {"k": 1e3, "M": 1e6, None: 1.0}[m.group(2)]
    if not math.isfinite(rate) or rate <= 0:
        raise r.fail(path, f"rate must be a positive finite number, got {value!r}")
    return round(NS / rate)


def _speed(r: _Reader, value: Any, path: PathT) -> float | None:
    if value in ("max", "fast", "topspeed"):
        return None
    if value == "original":
        return 1.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        speed = float(value)
    else:
        m = _SPEED.match(str(value))
        if m is None:
            raise r.fail(path, f"{value!r}: expected original, max, or a factor like 10x")
        speed = float(m.group(1))
    if not math.isfinite(speed) or speed <= 0:
        raise r.fail(path, f"speed must be a positive finite factor, got {value!r}")
    return speed


_EXP_KINDS = ("arrives", "never", "counter", "ping")


def _expectation(r: _Reader, raw: Any, path: PathT) -> Expectation:
    m = r.mapping(raw, path, ("name", *_EXP_KINDS))
    kinds = [k for k in _EXP_KINDS if k in m]
    if len(kinds) != 1:
        raise r.fail(path, f"an expectation is exactly one of: {', '.join(_EXP_KINDS)}")
    kind = kinds[0]
    kp = (*path, kind)
    b = m[kind]
    if kind != "counter" and isinstance(b, Mapping) and "name" in b:  # or inside the body
        if "name" in m:
            raise r.fail((*kp, "name"), "name is given twice")
        m = {**m, "name": r.name(b["name"], (*kp, "name"))}
        b = {k: v for k, v in b.items() if k != "name"}
    elif m.get("name") is not None:
        m = {**m, "name": r.name(m["name"], (*path, "name"))}
    if kind in ("arrives", "never"):
        b = r.mapping(b, kp, ("at", "match", "tagged", "after", "within", "count", "min",
                              "spread"), ("at",))
        port = r.name(b["at"], (*kp, "at"))
        flt = r.filter(b.get("match"), (*kp, "match"), b.get("tagged"), (*kp, "tagged"))
        start = r.duration(b.get("after", 0), (*kp, "after"))
        end = start + r.duration(b["within"], (*kp, "within")) if "within" in b else None
        count = r.integer(b["count"], (*kp, "count"), 0, 10**9) if "count" in b else None
        min_count = r.integer(b.get("min", 1), (*kp, "min"), 1, 10**9)
        if kind == "never" and ("count" in b or "min" in b):
            raise r.fail(kp, "`never` takes no count or min")
        what = f"{'no ' if kind == 'never' else ''}\"{flt.text or 'frame'}\" at {port}"
        if end is not None:
            what += f" by {fmt_ns(end)}"
        spread = _bounds(r, b["spread"], (*kp, "spread")) if "spread" in b else (None, None)
        if kind == "never" and "spread" in b:
            raise r.fail((*kp, "spread"), "`never` has no arrivals to spread")
        return Arrives(m.get("name") or what, path, port, flt, start, end, count, min_count,
                       kind == "never", *spread)
    if kind == "counter":
        b = r.mapping(b, kp, ("port", "name", "eq", "ge", "at"), ("port", "name"))
        counter = r.name(b["name"], (*kp, "name"))
        base = counter.split(".", 1)[0]
        if base not in COUNTER_NAMES or (counter.count(".") and base != "drops"):
            raise r.fail((*kp, "name"), f"unknown counter {counter!r} (use "
                         f"{', '.join(COUNTER_NAMES)} or drops.<reason>)")
        if counter.startswith("drops."):
            from netsim.dataplane.port import DROP_REASONS
            reason = counter.split(".", 1)[1]
            if reason not in DROP_REASONS:
                raise r.fail((*kp, "name"), f"unknown drop reason {reason!r} (known: "
                             f"{', '.join(DROP_REASONS)})")
        if ("eq" in b) == ("ge" in b):
            raise r.fail(kp, "give exactly one of eq or ge")
        eq = r.integer(b["eq"], (*kp, "eq"), 0, 2**63) if "eq" in b else None
        ge = r.integer(b["ge"], (*kp, "ge"), 0, 2**63) if "ge" in b else None
        at = r.duration(b["at"], (*kp, "at")) if "at" in b else None
        port = r.name(b["port"], (*kp, "port"))
        what = f"{port} {counter} {'==' if eq is not None else '>='} {eq if eq is not None else ge}"
        return CounterCheck(m.get("name") or what, path, port, counter, eq, ge, at)
    b = r.mapping(b, kp, ("from", "to", "at", "succeeds", "wait", "rtt"), ("from", "to"))
    src = r.name(b["from"], (*kp, "from"))
    dst = r.name(str(b["to"]), (*kp, "to"))
    succeeds = r.boolean(b.get("succeeds", True), (*kp, "succeeds"))
    at = r.duration(b.get("at", 0), (*kp, "at"))
    wait = r.duration(b.get("wait", 1), (*kp, "wait"))
    what = f"ping {src} -> {dst} {'answered' if succeeds else 'unanswered'}"
    rtt = _bounds(r, b["rtt"], (*kp, "rtt")) if "rtt" in b else (None, None)
    return PingCheck(m.get("name") or what, path, src, dst, at, succeeds, wait, *rtt)
