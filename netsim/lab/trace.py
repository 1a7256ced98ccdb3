"""Why did this frame (not) arrive? A hop-by-hop trace of one frame through a fabric, the way
Open vSwitch's `ovs-appctl ofproto/trace` explains a packet: at each switch the ingress VLAN
classification, the security checks, the MAC lookup (hit or miss, which entry), every output port
with its tag or untag, and every drop with its reason and the setting that caused it.

The verdict is not a second model of switching: the fabric's data plane (ports, switches, MAC
tables, shapers, queues, link state) is deep-copied as it is now, the frame is injected into the
copy, and the copy's own pipeline moves it, hop by hop along the cables, while hooks record what
happened (`PortCounters.on_drop`, a wrapper around each copied switch's `ingress`, and the new
frames in each port's queue). So the trace cannot diverge from what the lab would do with the
same frame at the same instant; the live lab is not touched (its MAC tables do not learn from a
traced frame, its counters do not move). The explanation text (classification, lookup, the
setting behind a drop) is read from the copy's state just before each hop.

This lives with the fabric (the control layer), so `Lab.trace` needs nothing above it; the CLI
(`hvsim trace`) and the live server are its adapters.
"""
from __future__ import annotations

import asyncio
import copy
import types
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from netsim.dataplane.lag import Lag
from netsim.dataplane.port import Pif, Port, TapList, VmPort
from netsim.dataplane.portgate import drop_cause, explain, matched_since, rule_hits
from netsim.errors import FrameError, TopologyError
from netsim.lab.fabric import Vm
from netsim.wire import frame as fr
from netsim.wire.discovery import is_discovery
from netsim.wire.framespec import SpecError, build_frame

#: how many switch hops a trace follows before calling it a loop
MAX_HOPS = 64

_MODES = {0: "access", 1: "trunk", 2: "native-tagged", 3: "native-untagged"}


@dataclass
class Output:
    """One copy of the frame leaving a switch through `port`."""

    port: str
    tag: int | None  # VLAN ID of the outer tag it leaves with; None = untagged
    then: str  # "delivered to VM x", "cable to phys/ge1", "leaves the lab (not linked)"

    def as_dict(self) -> dict[str, Any]:
        return {"port": self.port, "tag": self.tag, "then": self.then}


@dataclass
class Drop:
    """A copy of the frame dropped at `port` for `reason`; `cause` names the setting."""

    port: str
    reason: str
    cause: str

    def as_dict(self) -> dict[str, Any]:
        return {"port": self.port, "reason": self.reason, "cause": self.cause}


@dataclass
class Hop:
    """What one switch did with the frame that arrived on `in_port`."""

    switch: str
    in_port: str
    frame: bytes
    classify: str = ""
    security: list[str] = field(default_factory=list)
    lookup: str = ""
    outputs: list[Output] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    learn: str = ""  # a MAC move this frame makes (flapping), if any
    #: traffic rules that matched at this hop (filtering and marking)
    rules: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {"switch": self.switch, "in_port": self.in_port, "frame": self.frame.hex(),
               "classify": self.classify, "security": self.security, "lookup": self.lookup,
               "outputs": [o.as_dict() for o in self.outputs],
               "drops": [d.as_dict() for d in self.drops], "rules": self.rules}
        if self.learn:
            out["learn"] = self.learn
        return out


@dataclass
class Trace:
    """The whole path: hops in the order they ran, where copies were delivered, every drop."""

    source: str
    frame: bytes
    hops: list[Hop] = field(default_factory=list)
    delivered: dict[str, bytes] = field(default_factory=dict)  # VM port -> frame as delivered
    drops: list[Drop] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)  # ports it left the lab through (no cable)
    loop: bool = False
    #: ports whose CDP/LLDP agent took the frame (link discovery is never switched)
    consumed: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """`delivered to a, b` / `dropped` / ...: one line."""
        parts = []
        if self.delivered:
            parts.append("delivered to " + ", ".join(sorted(self.delivered)))
        if self.exits:
            parts.append("leaves the lab through " + ", ".join(self.exits))
        if self.consumed:
            parts.append("taken by the CDP/LLDP agent of " + ", ".join(self.consumed))
        if self.drops:
            parts.append("dropped at " + ", ".join(f"{d.port} ({d.reason})" for d in self.drops))
        if self.loop:
            parts.append(f"stopped after {MAX_HOPS} hops: a forwarding loop")
        return "; ".join(parts) or "went nowhere"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (`hvsim trace --json`)."""
        return {"source": self.source, "frame": self.frame.hex(), "verdict": self.verdict,
                "hops": [h.as_dict() for h in self.hops],
                "delivered": {k: v.hex() for k, v in sorted(self.delivered.items())},
                "drops": [d.as_dict() for d in self.drops], "exits": self.exits,
                "loop": self.loop, "consumed": self.consumed}

    def render(self) -> str:
        """The trace as text, one block per hop (like ofproto/trace)."""
        lines = [f"Flow: {describe_frame(self.frame)}", f"  enters at {self.source}"]
        for i, h in enumerate(self.hops, 1):
            lines.append("")
            lines.append(f"{i}. bridge {h.switch}, in_port {h.in_port}: "
                         f"{describe_frame(h.frame)}")
            lines.append(f"   VLAN: {h.classify}")
            for s in h.security:
                lines.append(f"   security: {s}")
            for r in h.rules:
                lines.append(f"   traffic rule matched: {r}")
            if h.learn:
                lines.append(f"   MAC learning: {h.learn}")
            if h.lookup:
                lines.append(f"   MAC lookup: {h.lookup}")
            for o in h.outputs:
                tag = f"tagged {o.tag}" if o.tag is not None else "untagged"
                lines.append(f"   -> output {o.port} ({tag}): {o.then}")
            for d in h.drops:
                lines.append(f"   x  drop at {d.port}: {d.reason} ({d.cause})")
        lines.append("")
        lines.append(f"Final: {self.verdict}")
        return "\n".join(lines)


def describe_frame(f: bytes) -> str:
    """`dl_src=.. dl_dst=.. vlan=.. type=0x0800 len=..` for one frame."""
    if len(f) < 14:
        return f"runt ({len(f)} bytes)"
    try:
        v = fr.parse(f)
    except FrameError:
        return f"malformed ({len(f)} bytes) {f[:18].hex()}"
    tags = (str(v.vid) + ("+inner" * (v.tags - 1))) if v.tags else "none"
    return (f"dl_src={fr.mac_to_str(v.src)} dl_dst={fr.mac_to_str(v.dst)} vlan={tags} "
            f"type=0x{v.ethertype:04x} len={len(f)}")


# -- copying the data plane ------------------------------------------------------------------
def snapshot(fab: Any) -> Any:
    """A deep copy of the fabric's data plane as it is now, without tasks, taps, captures or
    hooks: something frames can be pushed through without touching the original."""
    memo: dict[int, Any] = {id(fab.clock): fab.clock}
    switches = {id(sw) for sw in _switches(fab)}
    for attr in ("_tasks", "_pending", "_failures", "_watched", "captures"):
        obj = getattr(fab, attr, None)
        if obj is not None:
            memo[id(obj)] = type(obj)()
    for obj in _asyncio_objects(fab):  # waiters of queues, MAC tables, ...: not copied
        memo[id(obj)] = None
    for p in fab.ports():
        memo[id(p.taps)] = []
        for fn in p._link_listeners:  # keep the switches' own; drop watchers (a server)
            if not (isinstance(fn, types.MethodType) and id(fn.__self__) in switches):
                memo[id(fn)] = None
    try:
        twin = copy.deepcopy(fab, memo)
    except (TypeError, copy.Error) as exc:
        raise TopologyError(f"trace: cannot copy this lab's data plane ({exc}); tracing works "
                            "on labs that run in one process") from exc
    _rebind(memo)
    twin.running = False
    for p in twin.ports():
        p.taps = TapList(p)
        p.counters.on_drop = None
        p._link_listeners = [f for f in p._link_listeners if f is not None]
        p.queue._waiter = None
        p.refresh()
    for sw in _switches(twin):
        for attr in ("ingress", "ingress_batch"):  # a recorder's wrappers on the original
            sw.__dict__.pop(attr, None)
    return twin


_ASYNC_TYPES = (asyncio.Future, asyncio.Event, asyncio.Handle, asyncio.AbstractEventLoop)
_ATOMS = (str, bytes, bytearray, int, float, bool, type(None), types.FunctionType,
          types.BuiltinFunctionType, type)


def _asyncio_objects(root: Any, limit: int = 1_000_000) -> list[Any]:
    """Every asyncio future, event, handle or loop reachable from `root` through attributes and
    containers (the copy leaves them out: they belong to the running lab's loop)."""
    found: list[Any] = []
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _ATOMS):
            continue
        seen.add(id(o))
        if isinstance(o, _ASYNC_TYPES):
            found.append(o)
            continue
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
            continue
        if isinstance(o, list | tuple | set | frozenset | deque):
            if not (o and isinstance(next(iter(o)), bytes)):  # frames: nothing inside
                stack.extend(o)
            continue
        if isinstance(o, types.MethodType):
            stack.append(o.__self__)
            continue
        d = getattr(o, "__dict__", None)
        if isinstance(d, dict):
            stack.extend(d.values())
        for cls in type(o).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if isinstance(slot, str):
                    v = getattr(o, slot, None)
                    if v is not None:
                        stack.append(v)
    return found


def _rebind(memo: dict[int, Any]) -> None:
    """deepcopy keeps C-level bound methods (`self.get = self._table.get`) pointing at the
    original object; point them at the copy, or the copy would read and write the live lab."""
    for obj in list(memo.values()):
        attrs: dict[str, Any] = {}
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            attrs.update(d)
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if isinstance(slot, str) and hasattr(obj, slot):
                    attrs[slot] = getattr(obj, slot)
        for name, v in attrs.items():
            if isinstance(v, types.BuiltinMethodType | types.MethodWrapperType):
                owner = getattr(v, "__self__", None)
                twin_owner = memo.get(id(owner)) if owner is not None else None
                if twin_owner is not None and twin_owner is not owner:
                    setattr(obj, name, getattr(twin_owner, v.__name__))


def _switches(fab: Any) -> list[Any]:
    out = list(fab.switches.values())
    for h in fab.hosts.values():
        out.extend(h.switches.values())
    return out


# -- explaining --------------------------------------------------------------------------------
def _classify(port: Port, f: bytes) -> tuple[str, int | None]:
    """Text and VLAN of what `port`'s VLAN mode does with `f` (None if it will not classify)."""
    mode = getattr(port, "sw_mode", None)
    if mode is None:
        return "port not attached to a switch", None
    vlan = port.sw_vlan
    desc = _MODES.get(mode, "?")
    if mode == 0:
        desc += f" VLAN {vlan.vlan}"
    elif port.sw_allowed is not None:
        desc += " of " + ",".join(map(str, sorted(port.sw_allowed)))
    else:
        desc += " of all VLANs"
    if mode in (2, 3):
        desc += f", native VLAN {vlan.vlan}"
    if len(f) >= 18 and f[12] == 0x81 and f[13] == 0x00:
        vid = ((f[14] << 8) | f[15]) & 0x0FFF
        if vid == 0:
            return f"priority-tagged on {desc} port: VLAN {port.sw_pvid}", port.sw_pvid
        if mode == 0:
            return f"tagged {vid} on {desc} port", None
        allowed = port.sw_allowed
        if vid == 4095 or (allowed is not None and vid not in allowed):
            return f"tagged {vid} on {desc} port: not carried", None
        return f"tagged {vid} on {desc} port: VLAN {vid}", vid
    if not port.sw_untagged_ok:
        return f"untagged on {desc} port: untagged frames not carried", None
    return f"untagged on {desc} port: VLAN {port.sw_pvid}", port.sw_pvid


def _group(port: Port) -> str:
    g = getattr(port, "sw_group", None)
    return f"port group {g.name!r}" if g is not None else f"port {port.name}"


def _security(sw: Any, port: Port, f: bytes) -> list[str]:
    out = []
    if isinstance(port, VmPort) and getattr(port, "sw_group", None) is not None:
        src = f[6:12]
        ok = port.sw_forged_ok
        verdict = "ok" if ok or src == port.vnic.mac else "REJECT"
        out.append(f"{_group(port)} forged_transmits={'Accept' if ok else 'Reject'}: source "
                   f"{fr.mac_to_str(src)}, vNIC {fr.mac_to_str(port.vnic.mac)}: {verdict}")
    if getattr(port, "sw_shaper", None) is not None:
        out.append(f"{_group(port)} shaping: {port.sw_group.shaping}")
    out.extend(explain(port))  # VIF locking/QoS, traffic rules
    out.extend(_monitors(port))
    return out


def _monitors(port: Port) -> list[str]:
    """The mirroring sessions and flow meter watching frames that enter by `port`."""
    out = []
    for m in getattr(port, "sw_mirror_rx", ()):
        s = getattr(m, "session", None)
        if s is not None:
            sampled = f", 1 in {s.sampling_rate}" if s.sampling_rate > 1 else ""
            out.append(f"mirror session {s.name}: ingress copy{sampled}")
        elif getattr(m, "meter", None) is not None:
            out.append("IPFIX: metered into a flow")
    return out


def _learn_note(sw: Any, vid: int, port: Port, f: bytes) -> str:
    """A MAC move this frame's source makes: it was learned, and is still fresh, on another
    port of this switch - what a switch logs as MAC flapping."""
    mt = sw.mac_table
    e = mt.get_entry((sw.learning_vlan(vid), f[6:12]))
    if e is None or e.port is port or sw.clock.now_ns() - e.last_ns > mt.aging_ns:
        return ""
    return (f"{fr.mac_to_str(f[6:12])} moves from {e.port.name} to {port.name}: MAC flapping "
            f"({mt.moves} move(s) on {sw.name} so far)")


def _lookup(sw: Any, vid: int, f: bytes) -> str:
    dst = f[0:6]
    if dst[0] & 1:
        what = "broadcast" if dst == fr.BROADCAST else "multicast"
        return f"{what} {fr.mac_to_str(dst)}: flood VLAN {vid}"
    e = sw.mac_table.get_entry((vid, dst))
    now = sw.clock.now_ns()
    if e is None or now - e.last_ns > sw.mac_table.aging_ns:
        return f"miss for VLAN {vid} {fr.mac_to_str(dst)}: flood VLAN {vid}"
    age = (now - e.last_ns) / 1e9
    return f"hit VLAN {vid} {fr.mac_to_str(dst)} -> {e.port.name} (age {age:.1f} s)"


def _cause(port: Port, reason: str, f: bytes, vid: int | None) -> str:
    """The setting behind a drop, in the words of the configuration."""
    g = _group(port)
    policy = drop_cause(port, reason)  # traffic rules, VIF locking/QoS
    if policy is not None:
        return policy
    if reason == "not-promiscuous":
        return f"{port.name}: {g} promiscuous=Reject"
    if reason == "mac-changed":
        v = port.vnic  # type: ignore[attr-defined]
        return (f"{port.name}: {g} mac_changes=Reject (guest uses {fr.mac_to_str(v.effective_mac)},"
                f" configured {fr.mac_to_str(v.mac)})")
    if reason == "forged-source":
        return (f"{port.name}: {g} forged_transmits=Reject (source {fr.mac_to_str(f[6:12])} is "
                f"not {fr.mac_to_str(port.vnic.mac)})")  # type: ignore[attr-defined]
    if reason == "tagged-on-access":
        return f"{port.name}: access port of VLAN {port.sw_vlan.vlan} takes no tagged frames"
    if reason == "vlan-not-allowed":
        allowed = getattr(port, "sw_allowed", None)
        carried = ",".join(map(str, sorted(allowed))) if allowed else "all"
        return f"{port.name}: carries VLANs {carried}" + (f", not {vid}" if vid else "")
    if reason == "link-down":
        return f"{port.name}: link down" if not port.link_up else f"{port.name}: no uplink up"
    if reason == "no-destination":
        return f"no other port carries VLAN {vid}" if vid is not None else "no other port"
    if reason == "same-port":
        return f"{fr.mac_to_str(f[0:6])} was learned on the ingress port {port.name}"
    if reason == "uplink-to-uplink":
        return "a vSwitch never forwards from one uplink to another"
    if reason == "queue-full":
        return f"{port.name}: output queue full ({port.queue.maxlen} frames)"
    if reason == "shaped":
        return f"{port.name}: {g} traffic shaping"
    if reason == "no-learn-space":
        return f"{port.name}: {g} mac_limit={getattr(port, 'sw_mac_limit', 0)}"
    if reason == "reflected":
        return f"{fr.mac_to_str(f[6:12])} is a local vNIC's MAC coming back from the network"
    if reason == "mirror-destination":
        return f"{port.name}: mirror destination without normal I/O (normal_traffic_allowed)"
    if reason == "blocked":
        return f"{port.name}: blocked"
    if reason == "uplink-not-in-use":
        if port in getattr(port.switch, "_beacon_failed", ()):
            return (f"{port.name}: failed by beacon probing (link up, no beacons from its team "
                    "for 3 intervals)")
        return f"{port.name}: standby uplink while an active one is up (teaming)"
    if reason in ("runt", "oversize", "malformed"):
        return f"{len(f)} bytes, MTU {port.mtu}"
    return reason


# -- the frame to trace --------------------------------------------------------------------------
def frame_from(value: bytes | str | Mapping[str, Any], source: Port | None = None) -> bytes:
    """The frame to trace from what a user wrote: bytes; a hex string (spaces and colons
    allowed); or a frame spec (a mapping, or its YAML/flow text, e.g. `{eth: {dst: ...}, vlan:
    65}`). A spec without `eth.src` gets the MAC of `source` when it is a VM port."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        text = value.strip()
        compact = text.replace(" ", "").replace(":", "")
        if compact and len(compact) % 2 == 0 and all(c in "0123456789abcdefABCDEF"
                                                     for c in compact):
            return bytes.fromhex(compact)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError((), f"frame {text!r} is neither hex nor a frame spec: "
                            f"{str(exc).splitlines()[0]}") from exc
        if not isinstance(loaded, Mapping):
            raise SpecError((), f"frame {text!r} is neither hex nor a frame spec mapping")
        value = loaded
    if not isinstance(value, Mapping):
        raise SpecError((), f"frame must be bytes, hex or a frame spec, not {value!r}")
    spec = dict(value)
    eth = dict(spec.get("eth") or {})
    if "src" not in eth and isinstance(source, VmPort):
        eth["src"] = fr.mac_to_str(source.mac)
    spec["eth"] = eth
    return build_frame(spec)


# -- running -----------------------------------------------------------------------------------
class _Recorder:
    def __init__(self, twin: Any) -> None:
        self.twin = twin
        self.current: Hop | None = None
        self.current_vid: int | None = None
        self.current_frame = b""
        self.port_drops: list[Drop] = []  # drops outside any switch hop

    def hook(self, port: Port) -> Any:
        def on_drop(reason: str, n: int, frame: bytes | None) -> None:
            f = frame if frame is not None else self.current_frame
            d = Drop(_name(self.twin, port), reason, _cause(port, reason, f, self.current_vid))
            for _ in range(n):
                (self.current.drops if self.current is not None else self.port_drops).append(d)
        return on_drop


def _name(fab: Any, port: Port) -> str:
    return fab.short_name(port)


def trace_frame(fab: Any, source: Any, frame: bytes | str | Mapping[str, Any]) -> Trace:
    """Trace `frame` (bytes, hex or a frame spec: see `frame_from`) entering the fabric at
    `source` (a VM or VM port: the guest sends it; a PIF or physical switch port: it arrives
    from the wire) on a copy of the data plane."""
    src = fab[source] if isinstance(source, str) else source
    if isinstance(src, Vm) and src.ports:
        src = src.ports[0]  # a VM: its first NIC
    if not isinstance(src, Port):
        raise TopologyError(f"trace: {source!r} is not a port, PIF or VM")
    frame = frame_from(frame, src)
    twin = snapshot(fab)
    tsrc = twin[src.path]
    rec = _Recorder(twin)
    ports = list(twin.ports())
    for p in ports:
        p.counters.on_drop = rec.hook(p)
    t = Trace(_name(fab, src), frame)
    base = {p: len(p.queue) for p in ports}

    def wrap(sw: Any) -> None:
        inner = sw.ingress

        def ingress(port: Port, f: bytes, now: int | None = None) -> Any:
            hop = Hop(sw.name, _name(twin, port), f)
            hop.classify, vid = _classify(port, f)
            if port.sw_discovery is not None and is_discovery(f) and vid is not None:
                hop.lookup = "CDP/LLDP: the port's link discovery agent takes it (not switched)"
                t.consumed.append(_name(twin, port))
            elif vid is not None and len(f) >= 14 and not f[6] & 1:
                hop.security = _security(sw, port, f)
                inner_f = f[:12] + f[16:] if f[12:14] == b"\x81\x00" and len(f) >= 18 else f
                hop.lookup = _lookup(sw, vid, inner_f)
                hop.learn = _learn_note(sw, vid, port, f)
                if vid in getattr(sw, "span_vlans", {}):  # netsim.dataplane.mirror
                    take = sw.span_vlans[vid]
                    sess = getattr(take, "session", None)
                    hop.lookup = (f"RSPAN VLAN {vid}: to mirror session {sess.name}" if sess
                                  else f"RSPAN VLAN {vid}: flooded, nothing learned")
            t.hops.append(hop)
            prev = rec.current, rec.current_vid, rec.current_frame
            rec.current, rec.current_vid, rec.current_frame = hop, vid, f
            hits = rule_hits(sw.ports.values())
            try:
                return inner(port, f, now)
            finally:
                rec.current, rec.current_vid, rec.current_frame = prev
                hop.rules = matched_since(hits)

        sw.ingress = ingress

        def ingress_batch(port: Port, frames: Any) -> None:
            now = sw.clock.now_ns()
            for f in frames:
                ingress(port, f, now)

        sw.ingress_batch = ingress_batch

    for sw in _switches(twin):
        wrap(sw)

    pending: list[tuple[Port, bytes]] = [(tsrc, frame)]
    hops = 0
    while pending:
        hops += 1
        if hops > MAX_HOPS:
            t.loop = True
            break
        port, f = pending.pop(0)
        n_hops = len(t.hops)
        port.receive(f)
        new_hops = t.hops[n_hops:]
        # every frame that landed in a queue since: delivered, or onto a cable, or out
        for p in ports:
            q = p.queue.items
            b = base[p]
            if len(q) <= b:
                base[p] = len(q)
                continue
            fresh = list(q)[b:]
            base[p] = len(q)
            name = _name(twin, p)
            for out in fresh:
                tag = fr.parse(out).vid if len(out) >= 18 and out[12:14] == b"\x81\x00" else None
                if isinstance(p, VmPort):
                    then = f"delivered to {name}"
                    t.delivered[name] = out
                elif p.link is not None:
                    peer = p.link.peer(p)
                    then = f"cable to {_name(twin, peer)}"
                    if isinstance(p.switch, Lag):  # a member picked by the LAG's mode
                        then += f" (member of {p.switch.name}, {p.switch.choice_text()})"
                    pending.append((peer, out))
                else:
                    then = "leaves the lab (no cable)"
                    t.exits.append(name)
                hop = _owner_hop(new_hops, p)
                if hop is not None:
                    hop.outputs.append(Output(name, tag, then))
    for h in t.hops:
        t.drops.extend(h.drops)
    t.drops.extend(rec.port_drops)
    return t


def _owner_hop(hops: list[Hop], port: Port) -> Hop | None:
    """The hop (of those just run) whose switch sent out of `port` (a VLAN PIF's frames sit in
    its parent's queue)."""
    sw = port.switch
    names = {sw.name} if sw is not None else set()
    if isinstance(port, Pif):
        names.update(c.switch.name for c in port.vlan_pifs.values() if c.switch is not None)
    for h in reversed(hops):
        if h.switch in names:
            return h
    return hops[-1] if hops else None


__all__ = ["MAX_HOPS", "Drop", "Hop", "Output", "Trace", "frame_from", "snapshot", "trace_frame"]
