"""Isolation proofs over random topologies and frame sequences (struct-level, synchronous).

Each case builds 1-3 hosts, each with a vSphere standard switch of 1-4 port groups (EST 0, VST
1-4094 or VGT 4095, promiscuous and forged-transmits Accept/Reject at random) and 1-5 VMs, its
uplink cabled to one physical 802.1Q switch on a port that is a trunk (all VLANs or a subset),
native-untagged or native-tagged; the physical switch also has "outside" hosts on access
ports. Random frames (unicast to known/unknown MACs, broadcast,
multicast; untagged, priority-tagged or tagged; sometimes with a forged source) are sent from
VMs and outside hosts; links are pumped synchronously until quiet, and every delivered copy is
checked against three invariants computed from the configuration alone (not from the switch
code):

1. VLAN: a frame belongs to one network VLAN (a VST sender's group VLAN, a VGT sender's tag, an
   outside host's access VLAN; untagged frames of EST and VGT guests belong to the native VLAN
   of their host's physical port, 0 on a plain trunk); every copy delivered is in that VLAN as
   the receiver reads it.
2. Promiscuous Reject: a non-promiscuous vNIC receives unicast only for its own MAC.
3. Forged transmits Reject: a frame whose source MAC is not its sender's configured MAC never
   leaves the sender's switch.

Frames also come double-tagged (a priority or VLAN tag, 802.1Q or 802.1ad, over an inner tag)
or with a 0x9100 outer tag, which the switches treat as OVS does (only the outer 0x8100/0x88a8
tag classifies). A frame can then legitimately change VLAN where its VLAN leaves a port
untagged into a port that classifies by the inner tag (double tagging): every such cross-VLAN
delivery must be one that `netsim.lab.check.find_holes` (`hvsim check`) predicted for this
case — same sender, same receiver, same VLAN — and any other is a violation. Copies that stay
in their VLAN must arrive as sent, minus the outer tag that classified them.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from netsim.clock import ManualClock
from netsim.dataplane.policy import SecurityPolicy, VlanPolicy
from netsim.dataplane.port import Port, VmPort
from netsim.dataplane.switch import PhysicalSwitch, PortGroup, StandardSwitch
from netsim.lab.check import OTHER, find_holes
from netsim.wire import frame as fr

VLANS = [1, 5, 10, 100, 4094]


@dataclass
class _Rx:
    port: Port
    kind: str          # "vst", "est" (group VLAN 0), "vgt", "access"
    vlan: int          # group / access VLAN (unused for est and vgt)
    promiscuous: bool
    mac: bytes
    native: int        # the network VLAN untagged frames of this host's uplink belong to


@dataclass
class IsolationResult:
    """Cases and frames checked, and the violations found."""

    cases: int = 0
    frames_sent: int = 0
    copies_checked: int = 0
    #: cross-VLAN deliveries by double tagging, every one predicted by `hvsim check`
    crossings: int = 0
    #: cases where `hvsim check` found a hole
    cases_with_holes: int = 0
    violations: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def _case(rng: random.Random, res: IsolationResult, nframes: int) -> None:
    clock = ManualClock()
    phys = PhysicalSwitch("phys", clock=clock)
    links: list[tuple[Port, Port]] = []
    receivers: list[_Rx] = []
    # port, kind, vlan, forged_ok, mac, native
    senders: list[tuple[Port, str, int, bool, bytes, int]] = []
    mac_n = 0

    def new_mac() -> bytes:
        nonlocal mac_n
        mac_n += 1
        return bytes((0x00, 0x50, 0x56, 0, mac_n >> 8, mac_n & 0xFF))

    for h in range(rng.randint(1, 3)):
        sw = StandardSwitch(f"vs{h}", clock=clock)
        groups = []
        # the physical port this host's uplink is cabled to, and the network VLAN its untagged
        # frames belong to
        r = rng.random()
        if r < 0.5:
            phys_mode, native = VlanPolicy.trunk(), 0
        elif r < 0.7:
            phys_mode, native = VlanPolicy.trunk(*rng.sample(VLANS, rng.randint(1, 3))), 0
        else:
            native = rng.choice(VLANS)
            others = rng.sample(VLANS, rng.randint(0, 3))
            phys_mode = (VlanPolicy.native_untagged(native, native, *others) if r < 0.85
                         else VlanPolicy.native_tagged(native, native, *others))
        for g in range(rng.randint(1, 4)):
            vlan = rng.choice([0, *VLANS, 4095])
            sec = SecurityPolicy(promiscuous=rng.random() < 0.3,
                                 forged_transmits=rng.random() < 0.5)
            groups.append(sw.add_port_group(PortGroup(f"g{g}", vlan=vlan, security=sec)))
        trunk = VlanPolicy.trunk() if rng.random() < 0.6 else VlanPolicy.trunk(
            *rng.sample(VLANS, rng.randint(1, 3)))
        from netsim.dataplane.port import Pif
        up = sw.add_uplink(Pif(f"vmnic{h}"), vlan=trunk)
        pport = phys.add_port(Port(f"p{h}"), phys_mode)
        links.append((up, pport))
        for v in range(rng.randint(1, 5)):
            grp = rng.choice(groups)
            mac = new_mac()
            port = sw.attach(VmPort(f"h{h}vm{v}", mac=mac), grp)
            kind = "vgt" if grp.vlan == 4095 else "est" if grp.vlan == 0 else "vst"
            receivers.append(_Rx(port, kind, grp.vlan, grp.security.promiscuous, mac, native))
            senders.append((port, kind, grp.vlan, grp.security.forged_transmits, mac, native))
    for o in range(rng.randint(0, 3)):
        vlan = rng.choice(VLANS)
        port = phys.add_port(Port(f"out{o}"), VlanPolicy.access(vlan))
        mac = new_mac()
        receivers.append(_Rx(port, "access", vlan, True, mac, vlan))
        senders.append((port, "access", vlan, True, mac, vlan))

    known = [r.mac for r in receivers]
    all_switches = [phys, *dict.fromkeys(pt.switch for pt, *_ in senders if pt.switch)]
    # VLANs named in some port's configuration; `hvsim check` calls every other one OTHER
    configured = {v for sw in all_switches for p in sw.ports.values()
                  for v in (p.sw_vlan.vlan, *p.sw_vlan.trunks) if 0 < v < 4095}
    reach: dict[str, set[tuple[str, int]]] | None = None

    def predictions() -> dict[str, set[tuple[str, int]]]:
        nonlocal reach
        if reach is None:  # only for a case that shows a crossing: find_holes is not free
            report = find_holes(all_switches, links)
            reach = report.reach
            res.cases_with_holes += bool(report.holes)
        return reach

    for fid in range(nframes):
        port, kind, vlan, forged_ok, mac, native = rng.choice(senders)
        r = rng.random()
        dst = (rng.choice(known) if r < 0.6 else fr.BROADCAST if r < 0.75 else
               bytes.fromhex("01005e000001") if r < 0.85 else bytes((0x02, 9, 9, 9, 9, 9)))
        forged = rng.random() < 0.15
        src = bytes((0x02, 0xF0, 0, 0, 0, fid & 0xFF)) if forged else mac
        t = rng.random()
        tag = None if t < 0.5 else 0 if t < 0.6 else rng.choice([*VLANS, 4095, 7])
        # the outer tag's TPID (0x9100 is no VLAN tag to these switches) and an inner tag
        tpid = rng.choice((0x8100, 0x8100, 0x88A8, 0x9100)) if tag is not None else 0x8100
        inner = rng.choice([*VLANS, 7]) if rng.random() < 0.4 else None
        body = b"ID" + fid.to_bytes(4, "big") + bytes(40)
        f = fr.ethernet(dst, src, 0x0800, body)
        if inner is not None:
            f = fr.push_tag(f, inner)
        if tag is not None:
            f = fr.push_tag(f, tag, tpid=tpid)
        classifying = tag is not None and tpid != 0x9100
        untagged = not classifying or tag == 0
        # what a receiver in the frame's VLAN gets: the frame without its classifying tag
        sent_inner = f[:12] + f[16:] if classifying else f
        # the network VLAN this frame belongs to (None: it must not get anywhere)
        if kind == "vst":
            net = vlan if untagged else None
        elif kind == "est":
            net = native if untagged else None
        elif kind == "vgt":
            net = native if untagged else (tag if tag != 4095 else None)
        else:
            net = vlan if untagged else None
        leak_ok = not forged or forged_ok
        if isinstance(port, VmPort):
            port.vnic.send(f)
        else:
            port.receive(f)
        res.frames_sent += 1
        for _ in range(8):  # pump the cables until quiet
            moved = False
            for a, b in links:
                while (x := a.queue.get_nowait()) is not None:
                    b.receive(x)
                    moved = True
                while (x := b.queue.get_nowait()) is not None:
                    a.receive(x)
                    moved = True
            if not moved:
                break
        for rx in receivers:
            while (got := rx.port.queue.get_nowait()) is not None:
                res.copies_checked += 1
                gid = int.from_bytes(got[-44:-40], "big")
                if got[-46:-44] != b"ID" or gid != fid:
                    continue  # a frame of an earlier step cannot be queued any more
                where = f"case {res.cases} frame {fid} -> {rx.port.name}"
                if not leak_ok:
                    res.violations.append(f"{where}: forged-source frame left its switch")
                outer_vid = _outer_vid(got)
                if rx.kind == "vgt":
                    seen = outer_vid or rx.native
                    local = outer_vid if outer_vid in configured else (
                        OTHER if outer_vid else 0)
                else:
                    seen = rx.native if rx.kind == "est" else rx.vlan
                    local = rx.port.sw_vlan.vlan
                if net is None or seen != net:
                    # a cross-VLAN delivery: only by double tagging, and only where predicted
                    if (rx.port.name, local) in predictions().get(port.name, ()):
                        res.crossings += 1
                    elif net is None:
                        res.violations.append(
                            f"{where}: a frame that belongs to no VLAN arrived")
                    else:
                        res.violations.append(
                            f"{where}: VLAN {net} frame arrived as VLAN {seen}, a crossing "
                            "hvsim check did not predict")
                    continue
                # the copy is the frame minus the tag that classified it; or, when its VLAN
                # left a port untagged into a port that took the inner tag as the VLAN and that
                # tag named the same VLAN (double tagging within one VLAN), minus both tags
                plain = (sent_inner, sent_inner[:12] + sent_inner[16:]) if inner is not None \
                    else (sent_inner,)
                if rx.kind == "vgt":
                    body_ok = bool(outer_vid) or got in plain
                else:
                    body_ok = got in plain
                if not body_ok:
                    res.violations.append(f"{where}: copy in VLAN {net} is not the frame sent "
                                          "minus its classifying tag")
                if (not rx.promiscuous and not got[0] & 1 and got[0:6] != rx.mac):
                    res.violations.append(f"{where}: non-promiscuous port got unicast for "
                                          f"{fr.mac_to_str(got[0:6])}")
    res.cases += 1


def _outer_vid(f: bytes) -> int:
    """The VID of the outer 802.1Q/802.1ad tag (0 if none): what a VLAN-aware receiver reads."""
    if (f[12], f[13]) in ((0x81, 0x00), (0x88, 0xA8)):
        return ((f[14] << 8) | f[15]) & 0x0FFF
    return 0


def run_isolation(cases: int = 10_000, *, frames: int = 12, seed: int = 0,
                  max_violations: int = 20) -> IsolationResult:
    """Check `cases` random topologies with `frames` random frames each."""
    rng = random.Random(seed)
    res = IsolationResult()
    t0 = time.perf_counter()
    for _ in range(cases):
        _case(rng, res, frames)
        if len(res.violations) >= max_violations:
            break
    res.wall_s = round(time.perf_counter() - t0, 2)
    return res


def as_dict(res: IsolationResult) -> dict[str, Any]:
    """JSON-able summary."""
    return {"cases": res.cases, "frames_sent": res.frames_sent,
            "copies_checked": res.copies_checked, "crossings_predicted": res.crossings,
            "cases_with_holes": res.cases_with_holes, "violations": len(res.violations),
            "first_violations": res.violations[:5], "wall_s": res.wall_s}
