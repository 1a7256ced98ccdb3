"""CDP/LLDP agents of a lab: one per host uplink and per physical switch port that speaks them.

Built from the topology (`wire_discovery`, called by `build_fabric`): an ESXi switch's uplinks
default to CDP listen (vSphere's default); a XenServer bridge's PIFs consume CDP/LLDP and
speak LLDP only when the topology enables it (XenServer's Open vSwitch, `lldp:enable`); a
physical switch's ports speak what its `discovery:` names. `set_switch_discovery` changes a
host switch's setting at run time (a scenario step, a vDS push); `neighbour_table` is what
`hvsim run --neighbors` and the live view show.
"""
from __future__ import annotations

import hashlib
from typing import Any

from netsim.dataplane.discovery import (
    DiscoveryConfig,
    Identity,
    LinkDiscovery,
    NeighbourRow,
    neighbour_rows,
)
from netsim.dataplane.port import Pif, Port, VlanPif
from netsim.dataplane.switch import Bridge, StandardSwitch
from netsim.wire.discovery import CDP_CAP_IGMP, CDP_CAP_SWITCH

ESXI_DEFAULT = DiscoveryConfig(("cdp",), "listen")


def nic_mac(*names: str) -> bytes:
    """A stable, locally administered MAC for a physical NIC or switch port of the lab."""
    d = hashlib.blake2b("/".join(names).encode(), digest_size=5).digest()
    return bytes((0x02, *d))


def _agent(fab: Any, port: Port, device: str, ident: Identity, config: DiscoveryConfig,
           sw: Bridge, *, vlan: bool) -> LinkDiscovery:
    def vlan_of() -> int | None:
        return (port.sw_pvid or None) if vlan else None

    agent = LinkDiscovery(port, ident, config, fab.clock, vlan_of=vlan_of,
                          mtu_of=lambda: sw.port_mtu(port),
                          spawn=lambda coro: fab.spawn(coro, name=f"discovery {port.path}"))
    sw.set_discovery(port, agent.receive)
    fab.discovery[port.path] = (device, agent)
    if fab.running:  # else the fabric starts it when it starts
        agent.start()
    return agent


#: what each host type says it is (CDP Platform / LLDP System Description); Open vSwitch
#: 3.1 sends "openvswitch 3.1.0" and no System Name (tests/interop/test_discovery_ovs.py)
PLATFORMS = {"esxi": "VMware ESX", "xen": "openvswitch"}
#: XenServer's default: Open vSwitch consumes LLDP/CDP (reserved group addresses, not
#: forwarded without `other_config:forward-bpdu`) and sends nothing until `lldp:enable`
XEN_DEFAULT = DiscoveryConfig(("lldp",), "none")


def set_switch_discovery(fab: Any, host: str, sw: StandardSwitch, config: DiscoveryConfig,
                         *, host_type: str = "esxi") -> list[LinkDiscovery]:
    """Give every uplink (PIF) of host switch `sw` the CDP/LLDP setting `config`, creating
    its agent if it has none; returns the agents."""
    agents = []
    for pif in sw.uplinks:
        if isinstance(pif, VlanPif) or not isinstance(pif, Pif):
            continue  # a VLAN PIF shares its NIC's link: the NIC's agent speaks for it
        have = fab.discovery.get(pif.path)
        if have is not None:
            have[1].configure(config)
            agents.append(have[1])
            continue
        ident = Identity("" if host_type == "xen" else host, pif.name,
                         nic_mac(host, pif.name), platform=PLATFORMS.get(host_type, host_type))
        agents.append(_agent(fab, pif, host, ident, config, sw, vlan=False))
    return agents


def wire_discovery(fab: Any, topo: Any) -> None:
    """Create the agents the topology asks for (see the module docstring)."""
    for h in topo.hosts:
        for s in h.switches:
            config = s.discovery or (ESXI_DEFAULT if h.type == "esxi" else XEN_DEFAULT)
            if s.uplinks:
                set_switch_discovery(fab, h.name, fab[f"{h.name}/{s.name}"], config,
                                     host_type=h.type)
    for ps in topo.physical:
        if ps.discovery is None:
            continue
        sw = fab.switches[ps.name]
        for i, p in enumerate(ps.ports):
            port = sw.ports.get(p.name)
            if port is None:  # a port-channel member: not a switch port of its own (yet no
                continue      # CDP/LLDP per member link - see the README)
            ident = Identity(ps.name, p.ifname or f"Gi1/0/{i + 1}", nic_mac(ps.name, p.name),
                             platform=ps.platform, software="hvsim",
                             cdp_capabilities=CDP_CAP_SWITCH | CDP_CAP_IGMP, mgmt=ps.mgmt,
                             port_description=f"to {p.host} {p.pif}")
            _agent(fab, port, ps.name, ident, ps.discovery, sw, vlan=True)


def neighbour_table(fab: Any) -> list[NeighbourRow]:
    """Every agent's neighbours now, hosts first, by device and port."""
    agents = sorted(fab.discovery.values(),
                    key=lambda da: (da[0] not in fab.hosts, da[0], da[1].identity.port))
    return neighbour_rows(agents)
