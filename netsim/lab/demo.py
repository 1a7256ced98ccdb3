"""`hvsim demo`: the seed's XenServer VLAN example, built, driven and captured.

One host `xen1` with PIF `eth0` on a trunk port of a physical 802.1Q switch. Every VLAN gets its
own bridge (`xapi1`-`xapi3`) whose uplink is a VLAN PIF (`eth0.5`, `eth0.65`, `eth0.400`) that
tags frames on their way out of `eth0`; the untagged network is `xenbr0` on `eth0` itself.
Eight VMs: two per VLAN and two on the untagged network, each with one VIF (`vif<domid>.0`).
Three stations hang off access ports of the physical switch (VLAN 5, VLAN 65, and the native
VLAN 1 that carries the untagged network).

The demo sends named traffic steps (ARP, ICMP echo, broadcast, cross-VLAN attempts, a guest
trying to tag its own frames), records who received each frame and which port dropped what and
why, and writes one pcapng per port. Guests' frames are built with Scapy at this edge; the
fabric moves bytes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netsim.clock import ManualClock
from netsim.dataplane.policy import VlanPolicy
from netsim.dataplane.port import Port
from netsim.lab.fabric import Fabric
from netsim.wire import frame as fr

VLANS = (5, 65, 400)
NATIVE = 1  # the physical switch's VLAN for the host's untagged network
STEP_NS = 1_000_000  # each traffic step happens 1 ms after the previous one
SUBNETS = {5: "10.5.0", 65: "10.65.0", 400: "10.40.0", 0: "192.168.1"}


@dataclass
class Endpoint:
    """Something that sends and receives: a VM's VNIC, or a station behind a physical port."""

    name: str
    mac: str
    ip: str
    network: str  # "VLAN 5", ..., "untagged"
    send: Callable[[bytes], None]
    take: Callable[[], list[bytes]]


@dataclass
class StepResult:
    """One traffic step: what was sent, who received it, and what was dropped where and why."""

    label: str
    expect: str
    reached: list[str]
    drops: dict[str, dict[str, int]]
    uplink_tags: list[str]

    def ok(self) -> bool:
        """True when the receivers match the expectation written next to the step."""
        want = sorted(x for x in self.expect.split(",") if x) if self.expect != "-" else []
        return sorted(self.reached) == want


@dataclass
class DemoResult:
    """What the demo did: steps, per-port counters, capture files."""

    steps: list[StepResult] = field(default_factory=list)
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)
    captures: list[Path] = field(default_factory=list)
    out_dir: Path = Path()
    #: the physical switch's MAC table at the end: (VLAN, MAC, port)
    phys_macs: list[tuple[int, str, str]] = field(default_factory=list)


def build(fab: Fabric) -> dict[str, Endpoint]:
    """Build the seed's XenServer VLAN example in `fab`; returns the endpoints by name."""
    xen1 = fab.add_host("xen1")
    eth0 = xen1.add_pif("eth0")
    xenbr0 = xen1.add_bridge("xenbr0", uplink=eth0)
    bridges = {0: xenbr0}
    for i, vid in enumerate(VLANS, start=1):
        bridges[vid] = xen1.add_bridge(f"xapi{i}", uplink=xen1.vlan_pif(eth0, vid))

    phys = fab.add_physical_switch("phys")
    trunk = fab.add_port(phys, "ge1", VlanPolicy.native_untagged(NATIVE, *VLANS))
    fab.link(eth0, trunk)

    eps: dict[str, Endpoint] = {}
    plan = [(5, 1), (5, 2), (65, 3), (65, 4), (400, 5), (400, 6), (0, 7), (0, 8)]
    for vid, n in plan:
        vm = xen1.add_vm(f"vm{n}", domid=n)
        # Xen's MAC prefix 00:16:3e, next byte < 0x80; the VLAN and the domid are readable in it
        vif = vm.add_vif(bridges[vid], mac=f"00:16:3e:{vid >> 8:02x}:{vid & 0xFF:02x}:{n:02x}")
        net = f"VLAN {vid}" if vid else "untagged"
        eps[vm.name] = Endpoint(vm.name, fr.mac_to_str(vif.mac), f"{SUBNETS[vid]}.{n}", net,
                                vif.vnic.send, vif.vnic.drain)

    stations = [("srv5", "ge2", 5, "VLAN 5"), ("srv65", "ge3", 65, "VLAN 65"),
                ("lan1", "ge4", NATIVE, "untagged")]
    for i, (name, pname, vid, net) in enumerate(stations, start=1):
        port = fab.add_port(phys, pname, VlanPolicy.access(vid))
        mac = f"02:00:00:00:00:{i:02x}"
        eps[name] = Endpoint(name, mac, f"{SUBNETS[0 if vid == NATIVE else vid]}.{100 + i}",
                             net, port.receive, _nic(port, fr.mac_to_bytes(mac)))
    return eps


def _nic(port: Port, mac: bytes) -> Callable[[], list[bytes]]:
    """What a physical station's NIC accepts from its switch port: frames for its MAC and group
    addresses (it discards flooded unicast for others, as a real NIC does)."""

    def take() -> list[bytes]:
        out = []
        while (f := port.queue.get_nowait()) is not None:
            if f[0] & 1 or f[:6] == mac:
                out.append(f)
        return out

    return take


def _arp(a: Endpoint, b: Endpoint, *, reply: bool = False) -> bytes:
    from scapy.layers.l2 import ARP, Ether

    if reply:
        return fr.from_scapy(Ether(src=a.mac, dst=b.mac) / ARP(
            op=2, hwsrc=a.mac, psrc=a.ip, hwdst=b.mac, pdst=b.ip))
    return fr.from_scapy(Ether(src=a.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=a.mac, psrc=a.ip, pdst=b.ip))


def _ping(a: Endpoint, b: Endpoint, *, reply: bool = False, vid: int | None = None) -> bytes:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Dot1Q, Ether

    icmp = ICMP(type=0 if reply else 8, id=0x4856, seq=1)
    ether = Ether(src=a.mac, dst=b.mac)
    if vid is not None:
        ether = ether / Dot1Q(vlan=vid)
    return fr.from_scapy(ether / IP(src=a.ip, dst=b.ip) / icmp / (b"hvsim demo" * 3))


def steps(eps: dict[str, Endpoint]) -> list[tuple[str, str, Endpoint, bytes]]:
    """The traffic plan: (label, expected receivers, sender, frame)."""
    e = eps
    plan: list[tuple[str, str, Endpoint, bytes]] = []
    for a, b, net in (("vm1", "vm2", "VLAN 5"), ("vm3", "vm4", "VLAN 65"),
                      ("vm5", "vm6", "VLAN 400"), ("vm7", "vm8", "untagged")):
        peers = {"vm1": "vm2,srv5", "vm3": "vm4,srv65", "vm5": "vm6", "vm7": "vm8,lan1"}[a]
        plan += [
            (f"{a} ARP who-has {e[b].ip} ({net} broadcast)", peers, e[a], _arp(e[a], e[b])),
            (f"{b} ARP reply to {a}", a, e[b], _arp(e[b], e[a], reply=True)),
            (f"{a} ping {b}", b, e[a], _ping(e[a], e[b])),
            (f"{b} echo reply to {a}", a, e[b], _ping(e[b], e[a], reply=True)),
        ]
    plan += [
        ("srv65 (physical, VLAN 65) ARP who-has vm3", "vm3,vm4", e["srv65"],
         _arp(e["srv65"], e["vm3"])),
        ("vm3 ARP reply to srv65 (through eth0.65, tagged on eth0)", "srv65", e["vm3"],
         _arp(e["vm3"], e["srv65"], reply=True)),
        ("srv65 ping vm3 across the trunk", "vm3", e["srv65"], _ping(e["srv65"], e["vm3"])),
        ("srv5 ping vm1 across the trunk", "vm1", e["srv5"], _ping(e["srv5"], e["vm1"])),
        ("cross-VLAN: vm1 (VLAN 5) unicast to vm3's MAC (VLAN 65)", "-", e["vm1"],
         _ping(e["vm1"], e["vm3"])),
        ("cross-VLAN: vm7 (untagged) unicast to vm5's MAC (VLAN 400)", "-", e["vm7"],
         _ping(e["vm7"], e["vm5"])),
        ("VLAN hopping: vm1 sends its own tag 65 toward vm3", "-", e["vm1"],
         _ping(e["vm1"], e["vm3"], vid=65)),
        ("broadcast from vm6 stays in VLAN 400", "vm5", e["vm6"], _arp(e["vm6"], e["vm5"])),
        ("lan1 (native VLAN 1) broadcast reaches only the untagged network", "vm7,vm8",
         e["lan1"], _arp(e["lan1"], e["vm7"])),
    ]
    return plan


async def run(
    out_dir: Path,
    *,
    start_ns: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    attach: Callable[[Fabric], Any] | None = None,
) -> DemoResult:
    """Build, drive and capture the demo; pcapng files go to `out_dir`. Time starts at
    `start_ns` (now by default) and moves 1 ms per step, so the same start gives byte-identical
    captures. `attach(fabric)` runs once the fabric is built (a drop capture); what it returns is
    closed at the end."""
    clock = ManualClock(start_ns=time.time_ns() if start_ns is None else start_ns)
    result = DemoResult(out_dir=out_dir)
    async with Fabric(clock=clock) as fab:
        eps = build(fab)
        result.captures = fab.capture("all", out_dir)
        attached = attach(fab) if attach is not None else None
        try:
            await _drive(fab, eps, clock, result, progress)
        finally:
            if attached is not None:
                attached.close()
    return result


async def _drive(fab: Fabric, eps: Any, clock: ManualClock, result: DemoResult,
                 progress: Callable[[int, int], None] | None) -> None:
    plan = steps(eps)
    eth0 = fab["xen1/eth0"]
    uplink_seen: list[bytes] = []
    eth0.add_tap(lambda f, outbound: uplink_seen.append(f))
    for i, (label, expect, sender, frame) in enumerate(plan):
        before = {p.path: dict(p.counters.drops) for p in fab.ports()}
        uplink_seen.clear()
        clock.advance(STEP_NS / 1e9)
        sender.send(frame)
        await fab.settle()
        reached = [ep.name for ep in eps.values() if ep is not sender and ep.take()]
        drops: dict[str, dict[str, int]] = {}
        for p in fab.ports():
            for reason, n in p.counters.drops.items():
                d = n - before[p.path].get(reason, 0)
                if d:
                    drops.setdefault(fab.short_name(p), {})[reason] = d
        tags = sorted({_tag_text(f) for f in uplink_seen})
        result.steps.append(StepResult(label, expect, reached, drops, tags))
        if progress is not None:
            progress(i + 1, len(plan))
    result.counters = {fab.short_name(p): p.counters.as_dict() for p in fab.ports()}
    result.phys_macs = [(e.vlan, e.mac, e.port.name) for e in fab["phys"].mac_entries()]


def _tag_text(f: bytes) -> str:
    v = fr.parse(f)
    return f"{v.vid}" if v.tags else "untagged"


def render(result: DemoResult, console: Any) -> None:
    """Print the demo's tables with rich."""
    from rich.table import Table

    t = Table(title="hvsim demo: XenServer VLANs 5, 65, 400 + untagged on trunk eth0",
              title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("traffic", ratio=3)
    t.add_column("reached", ratio=1)
    t.add_column("VLAN on eth0", ratio=1)
    t.add_column("dropped at port: why", ratio=2, overflow="fold")
    t.add_column("ok")
    for i, s in enumerate(result.steps, start=1):
        drops = "; ".join(
            f"{port}: " + ", ".join(f"{r}×{n}" if n > 1 else r for r, n in sorted(d.items()))
            for port, d in sorted(s.drops.items())
        )
        t.add_row(str(i), s.label, ", ".join(s.reached) or "[red]nobody[/]",
                  ", ".join(s.uplink_tags) or "-", drops or "-",
                  "[green]yes[/]" if s.ok() else f"[bold red]no, want {s.expect}[/]")
    console.print(t)

    c = Table(title="port counters", title_justify="left")
    for col in ("port", "rx frames", "tx frames", "drops"):
        c.add_column(col, justify="right" if "frames" in col else "left")
    for name, cnt in result.counters.items():
        drops = ", ".join(f"{r}={n}" for r, n in cnt["drops"].items()) or "-"
        c.add_row(name, str(cnt["rx_frames"]), str(cnt["tx_frames"]), drops)
    console.print(c)

    m = Table(title="MAC table of phys", title_justify="left")
    for col in ("VLAN", "MAC", "port"):
        m.add_column(col)
    for vlan, mac, port in result.phys_macs:
        m.add_row(str(vlan), mac, port)
    console.print(m)
    console.print(f"pcapng files ({len(result.captures)}, one per port) in "
                  f"[bold]{result.out_dir}[/]: try `tshark -r {result.out_dir}/eth0.pcapng` "
                  "(or Wireshark, where a desktop has it)")
