"""VLAN holes: every path by which a frame from one VLAN can be delivered into another.

The switches here handle tags as Open vSwitch does (see `netsim.dataplane.switch`): only the
outer 802.1Q/802.1ad tag classifies, and a port that sends a VLAN untagged removes that tag and
nothing more. So a sender that can put a second tag under the one that classifies it — a guest
on an access port group sending a priority tag (VID 0) over a tag of its choice, a VGT guest
stacking two tags, a station on an access port doing the same — gets its inner tag exposed
wherever its VLAN leaves a port untagged (a trunk's native-untagged VLAN, VLAN 0 on a plain
trunk, an access port) into a port that classifies by tag: the next switch then delivers the
frame into the VLAN the sender chose. This is the classic double-tagging hop; real switches do
it too (recorded from OVS 3.1), so hvsim reproduces it and this module finds it in a plan.

`find_holes(switches, links)` works on the live data plane objects (ports with their VLAN
modes, switches, cables) without sending a frame: a closure over abstract frames — (switch,
VLAN, ingress port, concrete inner tags, "the sender stacked more tags") — computed from the
ports' configuration with the rules restated below, not with the switch code. `check_topology`
runs it over a topology's fabric; `hvsim check` prints the result.

What it reports is an over-approximation where it must be (teaming may pin a VM to one uplink;
a MAC table never widens a flood), and exact about VLANs: the isolation property test
(bench/_rel/isolation.py) checks that every cross-VLAN delivery it observes was predicted here.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netsim.dataplane.policy import VlanMode, VlanPolicy
from netsim.dataplane.port import Pif, Port, VlanPif
from netsim.dataplane.switch import ROLE_BRIDGE, ROLE_UPLINK, ROLE_VM, Bridge, StandardSwitch

if TYPE_CHECKING:
    from netsim.lab.fabric import Fabric
    from netsim.lab.topology import Topology

#: stands for "any VLAN not named in any port's configuration" (only trunks of all VLANs and VGT
#: ports carry it)
OTHER = -1

GUIDANCE = (
    "vSphere's guidance: do not use the native (untagged) VLAN for VM traffic — tag every VM "
    "network (VST) and leave the native VLAN of trunks unused; use VGT (VLAN 4095) only for the "
    "guests that must tag themselves"
)


@dataclass(frozen=True)
class Hole:
    """One way a sender's frame changes VLAN.

    `source` (a VM port or a station's port) sends a frame classified into `source_vlan` on its
    switch with a tag of its choosing underneath; `exposed_at` sends `exposed_vlan` untagged,
    so the frame arrives at `entering` with the sender's inner tag outermost and lands in
    `into_vlan` (OTHER: any VLAN named nowhere) on that port's switch, where `victims` (port,
    VLAN as that port reads it) receive it.
    """

    source: str
    source_vlan: int
    how: str
    exposed_at: str
    exposed_vlan: int
    entering: str
    entering_mode: str
    into_vlan: int
    victims: tuple[tuple[str, int], ...] = ()


@dataclass
class CheckReport:
    """Every hole found, the VGT ports seen (guests there choose their VLAN), and what each
    sender can reach."""

    holes: list[Hole] = field(default_factory=list)
    vgt_ports: list[str] = field(default_factory=list)
    #: per sender: every (port, VLAN as that port reads it) its frames can reach, legitimately
    #: or through a hole
    reach: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    #: what each port named in a hole is: "port group Db" for a VM's port, else its VLAN mode
    what: dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """True when no frame can change VLAN."""
        return not self.holes

    def lines(self) -> list[str]:
        """The report, grouped by the hop where the inner tag is exposed."""
        if not self.holes:
            return ["no VLAN holes: no sender can get a frame into another VLAN by double "
                    "tagging"]
        groups: dict[tuple[str, int, str], list[Hole]] = {}
        for h in self.holes:
            groups.setdefault((h.exposed_at, h.exposed_vlan, h.entering), []).append(h)
        out = []
        for (exposed, xvlan, entering), hs in sorted(groups.items()):
            senders = sorted({f"{h.source} ({self._what(h.source)}{h.how})" for h in hs})
            into = sorted({h.into_vlan for h in hs}, key=_vlan_order)
            victims = sorted({v for h in hs for v in h.victims},
                             key=lambda pv: (pv[0], _vlan_order(pv[1])))
            vl = ", ".join("any other VLAN" if v == OTHER else str(v) for v in into)
            vic = ", ".join(f"{p} ({self._what(p)}VLAN {'other' if v == OTHER else v})"
                            for p, v in victims)
            if exposed == entering:  # a VLAN-aware endpoint: the guest reads the inner tag
                where = (f"{_vlan_name(xvlan)} reaches {exposed} ({hs[0].entering_mode}, a "
                         "guest that reads tags) untagged, so the guest takes the next tag for "
                         "the VLAN")
            else:
                where = (f"{_vlan_name(xvlan)} leaves {exposed} untagged into {entering} "
                         f"({hs[0].entering_mode}), which classifies by the next tag")
            out.append(
                f"VLAN hole: {where}: a frame sent with a tag under its own lands in VLAN "
                f"{vl}. Senders: {', '.join(senders)}. Delivered to: {vic}."
            )
        out.append(GUIDANCE + ".")
        return out

    def _what(self, path: str) -> str:
        w = self.what.get(path)
        return f"{w}, " if w else ""


def _vlan_order(v: int) -> tuple[bool, int]:
    return (v == OTHER, v)  # "any other VLAN" last


def _vlan_name(v: int) -> str:
    return "VLAN 0 (untagged)" if v == 0 else f"VLAN {v}"


# -- the rules, restated from OVS (vswitch.xml vlan_mode; DESIGN.md §3) ------------------------
def _pvid(pol: VlanPolicy) -> int | None:
    """The VLAN an untagged or priority-tagged arrival joins, or None if it is dropped."""
    if pol.mode is VlanMode.TRUNK:
        return 0 if not pol.trunks or 0 in pol.trunks else None
    return pol.vlan


def _accepts_tagged(pol: VlanPolicy, vid: int) -> bool:
    """True if a frame tagged `vid` (not 0) is accepted into VLAN `vid`."""
    if pol.mode is VlanMode.ACCESS or vid == 4095:
        return False
    if vid == OTHER:
        return not pol.trunks
    if pol.mode is not VlanMode.TRUNK and vid == pol.vlan:
        return True
    return not pol.trunks or vid in pol.trunks


def _carries(pol: VlanPolicy, vid: int) -> bool:
    if vid == OTHER:
        return pol.mode is not VlanMode.ACCESS and not pol.trunks
    return pol.carries(vid)


def _leaves_untagged(pol: VlanPolicy, vid: int) -> bool:
    """True if VLAN `vid` leaves the port without a tag (PCP 0; a sender picks PCP 0)."""
    if pol.mode is VlanMode.ACCESS:
        return True
    if pol.mode is VlanMode.NATIVE_UNTAGGED and vid == pol.vlan:
        return True
    return vid == 0


# -- the closure -----------------------------------------------------------------------------
# A frame: (switch, VLAN, ingress port, concrete tags under the outer one, attacker stack?)
_State = tuple[Bridge, int, Port | None, tuple[int, ...], bool]


class _Net:
    def __init__(self, switches: Iterable[Bridge], links: Iterable[tuple[Port, Port]]) -> None:
        self.switches = list(dict.fromkeys(switches))
        self.peer: dict[Port, Port] = {}
        for a, b in links:
            self.peer[a] = b
            self.peer[b] = a
        vlans: set[int] = set()
        for sw in self.switches:
            for p in sw.ports.values():
                pol: VlanPolicy = p.sw_vlan
                vlans.add(pol.vlan)
                vlans.update(pol.trunks)
                if isinstance(p, VlanPif):
                    vlans.add(p.vid)
        self.candidates = [*sorted(v for v in vlans if 0 < v < 4095), OTHER]
        self._choices: dict[Port, list[int]] = {}

    def choices(self, b: Port) -> list[int]:
        """The tags worth trying as outermost at `b`: a VLAN PIF's, or a VLAN some other port
        of `b`'s switch carries (a frame in any other VLAN goes nowhere from there)."""
        c = self._choices.get(b)
        if c is None:
            others = [p for p in b.switch.ports.values() if p is not b] if b.switch else []
            wanted = {v for v in self.candidates
                      if any(_carries(p.sw_vlan, v) for p in others)}
            if isinstance(b, Pif):
                wanted.update(b.vlan_pifs)
            c = self._choices[b] = [v for v in self.candidates if v in wanted]
        return c

    def wire_end(self, port: Port) -> Port | None:
        """The port at the far end of `port`'s cable (a VLAN PIF's is its parent's)."""
        return self.peer.get(port.parent if isinstance(port, VlanPif) else port)

    def endpoints(self, sw: Bridge) -> list[Port]:
        """Ports where frames enter from or leave to something that is not a switch."""
        return [p for p in sw.ports.values()
                if p.sw_role == ROLE_VM or (p.sw_role == ROLE_BRIDGE and p not in self.peer)]

    # a frame leaves through `a`: the tags on the wire, outer first
    def emit(self, a: Port, vid: int, rest: tuple[int, ...]) -> tuple[int, ...]:
        tags = rest if _leaves_untagged(a.sw_vlan, vid) else (vid, *rest)
        if isinstance(a, VlanPif):
            tags = (a.vid, *tags)
        return tags

    def arrive(self, b: Port, tags: tuple[int, ...], stack: bool,
               on_hole: list[tuple[Port, int, _State]]) -> list[_State]:
        """The frames that a wire frame `tags` (+ the sender's stack) becomes after `b`."""
        outs: list[_State] = []
        if tags:
            outer_options = [(tags[0], tags[1:], stack, False)]
        elif stack:  # the sender's own tag is outermost now: any VLAN it likes, or a prio tag
            outer_options = [(v, (), True, True) for v in self.choices(b)]
            outer_options.append((0, (), True, False))
        else:
            outer_options = [(None, (), False, False)]
        for outer, rest, stk, chosen in outer_options:
            if isinstance(b, Pif) and b.vlan_pifs and outer not in (None, 0):
                # An 802.1Q tag goes to its VLAN PIF (eth0.V), which removes it: the next tag
                # classifies there; a tag of a VLAN with no VLAN PIF is dropped. An 802.1ad tag
                # is not demultiplexed: the PIF's own switch classifies it (both are possible).
                child = b.vlan_pifs.get(outer) if outer != OTHER else None
                if child is not None:
                    for st in self.arrive(child, rest, stk, on_hole):
                        outs.append(st)
                        if chosen:
                            on_hole.append((child, outer, st))
            st = self._classify(b, outer, rest, stk)
            if st is not None:
                outs.append(st)
                if chosen:
                    on_hole.append((b, outer, st))
        return outs

    @staticmethod
    def _classify(port: Port, outer: int | None, rest: tuple[int, ...],
                  stack: bool) -> _State | None:
        sw = port.switch
        if sw is None:
            return None
        pol = port.sw_vlan
        if outer in (None, 0):
            vid = _pvid(pol)
            if vid is None:
                return None
        elif _accepts_tagged(pol, outer):
            vid = outer
        else:
            return None
        return (sw, vid, port, rest, stack)

    def step(self, st: _State, on_hole: list[tuple[Port, int, _State]],
             holes_from: list[tuple[Port, Port, int, int, _State]]) -> list[_State]:
        """Where a frame goes from its switch: out of every port that carries its VLAN."""
        sw, vid, ingress, rest, stack = st
        vswitch = isinstance(sw, StandardSwitch)
        from_uplink = ingress is not None and ingress.sw_role == ROLE_UPLINK
        nxt: list[_State] = []
        for a in sw.ports.values():
            if a is ingress or not _carries(a.sw_vlan, vid):
                continue
            if vswitch and from_uplink and a.sw_role == ROLE_UPLINK:
                continue  # a vSwitch never forwards uplink to uplink
            b = self.wire_end(a)
            if b is None:
                continue
            tags = self.emit(a, vid, rest)
            found: list[tuple[Port, int, _State]] = []
            nxt.extend(self.arrive(b, tags, stack, found))
            for entering, into, new in found:
                holes_from.append((a, entering, vid, into, new))
            on_hole.extend(found)
        return nxt

    def closure(self, start: Sequence[_State]) -> tuple[set[_State], list]:
        seen: set[_State] = set()
        todo = list(start)
        hops: list[tuple[Port, Port, int, int, _State]] = []
        while todo:
            st = todo.pop()
            if st in seen:
                continue
            seen.add(st)
            todo.extend(self.step(st, [], hops))
        return seen, hops

    def delivered(self, states: Iterable[_State]) -> set[tuple[Port, int]]:
        """(endpoint port, VLAN at its switch) pairs the frames reach."""
        out = set()
        for sw, vid, ingress, _, _ in states:
            for p in self.endpoints(sw):
                if p is not ingress and _carries(p.sw_vlan, vid):
                    out.add((p, vid))
        return out


def _injections(p: Port, candidates: Sequence[int]) -> list[tuple[int, str]]:
    """VLANs a sender on port `p` can get a frame into with a tag of its own underneath."""
    pol: VlanPolicy = p.sw_vlan
    out = []
    pvid = _pvid(pol)
    if pvid is not None:
        out.append((pvid, "priority tag over a tag of its choice"))
    for v in candidates:
        if _accepts_tagged(pol, v):
            out.append((v, "two stacked tags (it may tag: VGT or trunk)"))
    return out


def _describe(p: Port) -> str:
    group = getattr(p, "sw_group", None) if p.sw_role == ROLE_VM else None
    return f"port group {group.name}" if group is not None else p.sw_vlan.describe()


class _HoleSink:
    """Records a sender's holes once each, and what they let it reach."""

    def __init__(self, report: CheckReport, src: Port, reach: set[tuple[str, int]],
                 seen: set[tuple]) -> None:
        self.report, self.src, self.reach, self.seen = report, src, reach, seen

    def __call__(self, how: str, vid: int, a: Port, entering: Port, xvlan: int, into: int,
                 victims: tuple[tuple[str, int], ...]) -> None:
        k = (a.path, entering.path, xvlan, into, victims)
        if victims and k not in self.seen:
            self.seen.add(k)
            self.reach.update(victims)
            self.report.holes.append(Hole(
                source=self.src.path, source_vlan=vid, how=how, exposed_at=a.path,
                exposed_vlan=xvlan, entering=entering.path,
                entering_mode=entering.sw_vlan.describe(), into_vlan=into, victims=victims))


def find_holes(switches: Iterable[Bridge], links: Iterable[tuple[Port, Port]]) -> CheckReport:
    """Every (sender, hop, VLAN) by which a frame can be delivered into another VLAN.

    A hop is either a cable (a port sends the frame's VLAN untagged into a port that classifies
    by tag) or a VLAN-aware endpoint (a VGT guest, a station on a trunk) that receives the
    frame's VLAN untagged and so reads the sender's inner tag as the VLAN.
    """
    net = _Net(switches, links)
    report = CheckReport()
    report.what = {p.path: _describe(p) for sw in net.switches for p in net.endpoints(sw)}
    # Closures depend on the switch and VLAN a frame starts in, not on which endpoint sent it
    # (an endpoint's own port has no cable, so a frame never leaves by it): computed once each.
    legit_cache: dict[tuple, tuple[set[tuple[Port, int]], set[tuple[Bridge, int]]]] = {}
    attack_cache: dict[tuple[Bridge, int], tuple[set[_State], list]] = {}
    landed_cache: dict[tuple, set[tuple[Port, int]]] = {}
    for sw in net.switches:
        for src in net.endpoints(sw):
            if src.sw_role == ROLE_VM and src.sw_vlan.mode is VlanMode.TRUNK:
                report.vgt_ports.append(src.path)
            injections = _injections(src, net.candidates)
            if not injections:
                continue
            # what the sender reaches legitimately: plain frames of every VLAN it may use
            key = (sw, tuple(v for v, _ in injections))
            if key not in legit_cache:
                legit_states, _ = net.closure([(sw, v, None, (), False) for v, _ in injections])
                legit_cache[key] = (net.delivered(legit_states),
                                    {(s, v) for s, v, *_ in legit_states})
            legit, legit_sw = legit_cache[key]
            reach = {(p.path, v) for p, v in legit if p is not src}
            hole = _HoleSink(report, src, reach, set())
            for vid, how in injections:
                if (sw, vid) not in attack_cache:
                    attack_cache[sw, vid] = net.closure([(sw, vid, None, (), True)])
                states, hops = attack_cache[sw, vid]
                for a, entering, xvlan, into, new in hops:
                    if into == xvlan or (new[0], new[1]) in legit_sw:
                        continue  # same VLAN, or the sender could put a frame there anyway
                    start = (*new[:4], False)
                    if start not in landed_cache:
                        landed_cache[start] = net.delivered(net.closure([start])[0])
                    hole(how, vid, a, entering, xvlan, into, tuple(sorted(
                        (p.path, v) for p, v in landed_cache[start] - legit if p is not src)))
                for s2, x, ingress, rest, stack in states:
                    if not stack or rest:
                        continue
                    for p in net.endpoints(s2):
                        pol = p.sw_vlan
                        if (p is ingress or p is src or pol.mode is VlanMode.ACCESS
                                or not _carries(pol, x) or not _leaves_untagged(pol, x)):
                            continue
                        for v in net.candidates:
                            if v != x and (p, v) not in legit:
                                hole(how, vid, p, p, x, v, ((p.path, v),))
            report.reach[src.path] = reach
    return report


def fabric_parts(fab: Fabric) -> tuple[list[Bridge], list[tuple[Port, Port]]]:
    """The switches (physical and every host's) and the cables of a `Fabric`."""
    switches: list[Bridge] = list(fab.switches.values())
    for host in fab.hosts.values():
        switches.extend(host.switches.values())
    return switches, [(lk.a, lk.b) for lk in fab.links]


def check_topology(topo: Topology) -> CheckReport:
    """`find_holes` over the fabric a `Topology` builds (nothing is started)."""
    from netsim.lab.lab import build_fabric

    return find_holes(*fabric_parts(build_fabric(topo)))
