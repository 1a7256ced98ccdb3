"""Pictures of a topology: Graphviz DOT from the networkx graph, rendered by `dot`.

One box per host (VMs on top, then port groups labelled with their VLAN, the switches, Xen VLAN
PIFs, and the PIFs at the bottom), the physical switches below the hosts, cables labelled with
their 802.1Q mode and VLANs, standby uplinks dashed. `to_dot` is pure; `render` runs `dot`.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import networkx as nx

from netsim.dataplane.discovery import DiscoveryConfig
from netsim.errors import NetsimError
from netsim.lab.policyspec import policy_label, vif_label
from netsim.lab.topology import PhysLinkSpec, PhysPortSpec, Topology, to_graph

FORMATS = ("svg", "png", "pdf", "dot")


class DrawError(NetsimError):
    """The picture could not be made (unknown format, `dot` missing or failing)."""


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _vlan_label(vlan: int) -> str:
    if vlan == 0:
        return "untagged"
    if vlan == 4095:
        return "VLAN 4095 (guest tagging)"
    return f"VLAN {vlan}"


def _vlans(vlans: tuple[int, ...]) -> str:
    if not vlans:
        return "all"
    out: list[str] = []
    start = prev = vlans[0]
    for v in (*vlans[1:], None):
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(out)


def _discovery_label(d: DiscoveryConfig) -> str:
    """`CDP listen`, `CDP+LLDP both`: a switch's link discovery setting."""
    return f"{'+'.join(p.upper() for p in d.protocols)} {d.operation}"


def _pvlan_label(entries: tuple[tuple[int, int, str], ...]) -> str:
    """`PVLAN 100: 101 isolated, 102 community`, one line per primary."""
    by: dict[int, list[str]] = {}
    for pri, sec, t in entries:
        row = by.setdefault(pri, [])
        if sec != pri:
            row.append(f"{sec} {t}")
    return "\n".join(f"PVLAN {p}: {', '.join(s) or 'no secondaries'}" for p, s in by.items())


def _monitoring_label(topo: Topology, host: str, spec: Any) -> str:
    """Lines for a switch's mirroring sessions and IPFIX export (`VMwareVspanSession`,
    `VMwareIpfixConfig`)."""
    out = ""
    for m in topo.mirrors:
        if m.host != host or m.switch != spec.name:
            continue
        if m.type == "remoteMirrorSource":
            what = f"RSPAN -> VLAN {m.encapsulation_vlan}"
        elif m.type == "encapsulatedRemoteMirrorSource":
            what = f"{m.encapsulation.upper()} -> {m.destination}"
        elif m.type == "remoteMirrorDest":
            what = f"RSPAN VLAN {m.vlans[0]} -> {m.destination}"
        else:
            what = f"-> {m.destination}"
        srcs = ", ".join(m.sources) or f"VLAN {_vlans(m.vlans)}"
        extra = [f"1 in {m.sampling_rate}"] if m.sampling_rate > 1 else []
        if m.mirrored_packet_length:
            extra.append(f"{m.mirrored_packet_length} B")
        if not m.normal_traffic_allowed and m.type in ("dvPortMirror", "remoteMirrorDest"):
            extra.append("no normal I/O")  # only a destination port has normal I/O
        src = "" if m.type == "remoteMirrorDest" else f"{srcs} "
        out += f"\nmirror {m.name}: {src}{what}" + (f" ({', '.join(extra)})" if extra else "")
    ip = spec.ipfix
    if ip is not None:
        out += f"\nIPFIX -> {ip.collector_ip}:{ip.collector_port}"
        if ip.sampling_rate > 1:
            out += f" (1 in {ip.sampling_rate})"
        if ip.internal_flows_only:
            out += ", internal only"
    return out


def _cable_label(spec: object) -> str:
    if isinstance(spec, PhysPortSpec):
        if spec.mode == "access":
            return f"access {spec.vlan or 'untagged'}"
        if spec.mode == "trunk":
            return f"trunk {_vlans(spec.vlans)}"
        return f"{spec.mode} (native {spec.vlan}) {_vlans(spec.vlans)}"
    if isinstance(spec, PhysLinkSpec):
        return f"trunk {_vlans(spec.vlans)}"
    return ""


def to_dot(topo: Topology, graph: nx.MultiGraph | None = None) -> str:
    """The topology as Graphviz DOT text."""
    g = graph if graph is not None else to_graph(topo)
    lines = [
        f"graph {_q(topo.name)} {{",
        '  graph [rankdir=TB, newrank=true, nodesep=0.35, ranksep=0.55, fontname="Helvetica",'
        f' label={_q(topo.name)}, labelloc=t, fontsize=18];',
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    styles = {
        "vm": 'shape=box, style="rounded,filled", fillcolor="#dbeafe", color="#1d4ed8"',
        "portgroup": 'shape=tab, style=filled, fillcolor="#fef3c7", color="#b45309"',
        "switch": 'shape=box, style="filled,bold", fillcolor="#dcfce7", color="#15803d"',
        "vlanpif": 'shape=ellipse, style=filled, fillcolor="#f3e8ff", color="#7e22ce"',
        "pif": 'shape=cds, style=filled, fillcolor="#e5e7eb", color="#374151"',
        "pswitch": 'shape=box3d, style=filled, fillcolor="#cbd5e1", color="#0f172a"',
    }
    ranks: dict[str, list[str]] = {k: [] for k in styles}
    for host in topo.hosts:
        kind_label = "XenServer" if host.type == "xen" else "ESXi"
        lines.append(f"  subgraph {_q('cluster_' + host.name)} {{")
        lines.append(f'    label={_q(f"{host.name} ({kind_label})")}; style="rounded";'
                     ' color="#64748b"; fontsize=14;')
        for nid, data in g.nodes(data=True):
            if data.get("host") != host.name or data["kind"] not in styles:
                continue
            kind = data["kind"]
            spec = data.get("spec")
            if kind == "vm":
                label = data["name"] + (" (router)" if spec.router else "")
                if host.type == "xen":
                    label += f"\ndom{spec.domid}"
                label += vif_label(spec)  # VIF locking and QoS
            elif kind == "portgroup":
                pv = {sec: (pri, t) for pri, sec, t in host.switch(spec.switch).pvlans}
                if spec.vlan in pv:  # a private VLAN port group
                    pri, t = pv[spec.vlan]
                    label = f"{data['name']}\nPVLAN {spec.vlan} {t}"
                    if spec.vlan != pri:
                        label += f" (primary {pri})"
                else:
                    label = f"{data['name']}\n{_vlan_label(spec.vlan)}"
                if spec.internal:
                    label += "\ninternal"
                if spec.mtu is not None:
                    label += f"\nMTU {spec.mtu}"
                if spec.blocked:
                    label += "\nBLOCKED"
                if spec.shaping:
                    label += f"\nshaped {spec.shaping.average_bps / 1e6:g} Mbit/s"
                label += policy_label(spec)  # egress shaping, traffic rules, locking default
                if spec.teaming is not None:  # the port group overrides its switch's teaming
                    label += f"\nteaming: {', '.join(spec.teaming.active)} active"
                    if spec.teaming.standby:
                        label += f", {', '.join(spec.teaming.standby)} standby"
            elif kind == "switch":
                label = data["name"]
                t = spec.teaming
                if t is not None and t.policy in ("ip-hash", "src-mac", "failover", "load-based"):
                    label += f"\nteaming: {t.policy}"
                elif t is not None and t.standby:
                    label += "\nteaming: active/standby"
                elif t is not None:
                    label += "\nteaming: port id"
                if t is not None and not t.failback:
                    label += ", no failback"
                if t is not None and not t.notify_switches:
                    label += ", no notify"
                if t is not None and t.failure_detection == "beacon":
                    label += ", beacon probing"
                if spec.internal:
                    label += "\n(no uplink)"
                if spec.pvlans:
                    label += f"\n{_pvlan_label(spec.pvlans)}"
                if spec.mtu is not None:
                    label += f"\nMTU {spec.mtu}"
                if spec.lag is not None:  # vDS LAG / Xen bond
                    label += f"\n{spec.lag.name}: {spec.lag.describe()}"
                ur = spec.uplink_traffic_rules
                if ur is not None and ur.rules:  # the uplink port group's filtering
                    acts = ", ".join(sorted({r.action.value for r in ur.rules}))
                    label += (f"\nuplink port group: {len(ur.rules)} traffic rule"
                              f"{'s' if len(ur.rules) != 1 else ''} ({acts})"
                              + ("" if ur.enabled else " disabled"))
                label += _monitoring_label(topo, host.name, spec)
                if spec.discovery is not None:  # set in the file (else the host's default)
                    label += f"\n{_discovery_label(spec.discovery)}"
            else:
                label = data["name"]
                if kind == "pif" and not spec.up:
                    label += "\n(down)"
            ranks[kind].append(nid)
            lines.append(f"    {_q(nid)} [label={_q(label)}, {styles[kind]}];")
        lines.append("  }")
    for nid, data in g.nodes(data=True):
        if data["kind"] == "pswitch":
            ranks["pswitch"].append(nid)
            plabel = data["name"]
            if data["spec"].pvlans:
                plabel += f"\n{_pvlan_label(data['spec'].pvlans)}"
            for ch in data["spec"].channels:  # port-channels
                plabel += f"\n{ch.name}: {ch.describe()}"
            if data["spec"].discovery is not None:
                plabel += f"\n{_discovery_label(data['spec'].discovery)}"
            if data["spec"].rspan_vlans:
                plabel += f"\nRSPAN VLAN {_vlans(data['spec'].rspan_vlans)}"
            lines.append(f"  {_q(nid)} [label={_q(plabel)}, {styles['pswitch']}];")
    ranks["switch"].extend(ranks.pop("vlanpif"))
    for kind in ("vm", "portgroup", "switch", "pif", "pswitch"):
        if ranks[kind]:
            lines.append("  { rank=same; " + " ".join(_q(n) for n in ranks[kind]) + " }")

    for a, b, data in g.edges(data=True):
        kind = data["kind"]
        ka, kb = g.nodes[a]["kind"], g.nodes[b]["kind"]
        if kind == "contains":
            continue
        if kind == "nic":
            continue  # drawn as VM -> port group below, labelled with the vNIC
        if kind == "attach":
            vnic = g.nodes[a] if ka == "vnic" else g.nodes[b]
            pg = b if ka == "vnic" else a
            vm = next(n for n in g.neighbors(a if ka == "vnic" else b)
                      if g.nodes[n]["kind"] == "vm")
            f = vnic["spec"]
            label = f.port + (f"\n{f.ip}" if f.ip else "")
            lines.append(f"  {_q(vm)} -- {_q(pg)} [label={_q(label)}];")
        elif kind == "uplink":
            sw, pif = (a, b) if ka == "switch" else (b, a)
            style = ', style=dashed, label="standby"' if data.get("role") == "standby" else ""
            if data.get("lag"):
                style = f", label={_q(data['lag'])}"
            lines.append(f"  {_q(sw)} -- {_q(pif)} [penwidth=1.5{style}];")
        elif kind == "portgroup":
            pg, sw = (a, b) if ka == "portgroup" else (b, a)
            host = g.nodes[pg]["host"]
            has_vlanpif = any(g.nodes[n]["kind"] == "vlanpif" for n in g.neighbors(pg))
            if not (has_vlanpif and host and topo.host(host).type == "xen"):
                # (a Xen VLAN network reaches its PIF through ethX.VID instead)
                lines.append(f"  {_q(pg)} -- {_q(sw)};")
        elif kind == "vlanpif":
            order = ("portgroup", "vlanpif", "pif")
            top, bottom = (a, b) if order.index(ka) < order.index(kb) else (b, a)
            lines.append(f"  {_q(top)} -- {_q(bottom)} [color=\"#7e22ce\"];")
        elif kind == "cable":
            if ka == "pswitch" and kb == "pif":
                a, b = b, a
            label = _cable_label(data.get("spec"))
            lines.append(f"  {_q(a)} -- {_q(b)} [penwidth=2.5, color=\"#0f172a\", "
                         f"label={_q(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(topo: Topology, out: str | Path) -> Path:
    """Draw `topo` to `out`; the format follows the suffix (.svg, .png, .pdf, .dot)."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise DrawError(f"{out}: cannot draw to .{fmt or '(no suffix)'}; "
                        f"use one of {', '.join('.' + f for f in FORMATS)}")
    dot_text = to_dot(topo)
    if not out.parent.is_dir():  # dot would say only "Could not open ... for writing"
        raise DrawError(f"{out}: cannot write: no directory {str(out.parent)!r}")
    if fmt == "dot":
        try:
            out.write_text(dot_text)
        except OSError as exc:
            raise DrawError(f"{out}: cannot write: {exc.strerror or exc}") from None
        return out
    exe = shutil.which("dot")
    if exe is None:
        raise DrawError("graphviz `dot` is not installed (scripts/setup.sh installs it)")
    try:
        proc = subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=dot_text.encode(),
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DrawError(f"{out}: dot failed: {exc}") from exc
    if proc.returncode != 0:
        raise DrawError(f"{out}: dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return out
