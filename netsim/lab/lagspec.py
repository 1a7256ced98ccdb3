"""LAGs, bonds and port-channels in a topology file: what `lag:` (ESXi vDS), `bond:` (XenServer)
and a physical switch's `channels:` say, validated with the file's line numbers.

```yaml
hosts:
  esx1:
    type: esxi
    switches:
      dvs:
        uplinks: [vmnic0, vmnic1]
        lag: {name: lag1, mode: active, timeout: fast,
              load_balance: srcDestIpTcpUdpPortVlan}   # VMwareDvsLacpGroupConfig
  xen1:
    switches:
      xenbr0:
        uplinks: [eth0, eth1]
        bond: {mode: lacp, hashing_algorithm: tcpudp_ports,   # xe bond-create mode=lacp
               lacp_fallback_ab: true}   # other-config:lacp-fallback-ab (OVS vswitch.xml)
physical:
  core:
    ports: {esx1.vmnic0: {}, esx1.vmnic1: {}}
    channels:
      Po1: {ports: [esx1.vmnic0, esx1.vmnic1], mode: active, rate: fast,
            load_balance: src-dst-ip}   # channel-group 1 mode active; lacp rate fast
```

Defaults follow each product: a vSphere LAG is `passive` with the `slow` timeout and
`srcDestIpTcpUdpPortVlan`; a XenServer bond is `balance-slb` (rebalanced every 10000 ms),
`lacp` bonds hash `tcpudp_ports` and go down without a partner unless `lacp_fallback_ab`
(then they run active-backup until a partner speaks LACP); a switch's channel needs its `mode`
(active, passive or `on` = static) and runs `lacp rate normal` (slow) with `src-dst-ip` unless
told otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netsim.dataplane.lag import HASHES, VSPHERE_DEFAULT_HASH, XEN_DEFAULT_HASH, LagConfig

PathT = tuple[Any, ...]

_VSPHERE_KEYS = ("name", "uplinks", "mode", "timeout", "load_balance")
_XEN_KEYS = ("name", "mode", "hashing_algorithm", "rebalance_interval", "lacp_time",
             "lacp_fallback_ab")
_CHANNEL_KEYS = ("ports", "mode", "rate", "load_balance")
XEN_BOND_MODES = ("active-backup", "balance-slb", "lacp")
#: Cisco `port-channel load-balance` → our hash (netsim.dataplane.lag.HASHES)
CISCO_HASHES = {
    "src-mac": "srcMac", "dst-mac": "destMac", "src-dst-mac": "srcDestMac",
    "src-ip": "srcIp", "dst-ip": "destIp", "src-dst-ip": "srcDestIp",
    "src-port": "srcTcpUdpPort", "dst-port": "destTcpUdpPort",
    "src-dst-port": "srcDestTcpUdpPort", "src-dst-mixed-ip-port": "srcDestIpTcpUdpPort",
}
_VSPHERE_HASHES = tuple(k for k in HASHES if k not in ("tcpudp_ports", "src_mac"))


@dataclass(frozen=True)
class LagSpec:
    """A LAG of a host switch (vDS LAG, XenServer bond) or a physical switch's port-channel:
    its logical port's name, member ports, and how it behaves."""

    name: str
    members: tuple[str, ...]
    config: LagConfig

    def describe(self) -> str:
        """`lacp active fast srcDestIp` / `balance-slb 10000 ms` / `static`, for drawings."""
        c = self.config
        if c.mode == "lacp":
            fallback = " fallback-ab" if c.lacp_fallback_ab else ""
            return f"lacp {c.lacp} {c.rate} {c.hashing}{fallback}"
        if c.mode == "balance-slb":
            return f"balance-slb {c.rebalance_interval_ms} ms"
        if c.mode == "static":
            return f"static {c.hashing}"
        return c.mode


def _choice(c: Any, raw: dict[str, Any], key: str, path: PathT, choices: tuple[str, ...],
            default: str) -> str:
    v = raw.get(key, default)
    if v not in choices:
        raise c.fail((*path, key), f"{key} must be one of {', '.join(choices)}, got {v!r}")
    return str(v)


def host_lag(c: Any, raw: Any, path: PathT, htype: str, uplinks: tuple[str, ...]
             ) -> LagSpec | None:
    """The `lag:` (ESXi) or `bond:` (Xen) of a host switch with `uplinks`."""
    if raw is None:
        return None
    key = path[-1]
    if htype == "esxi":
        if key != "lag":
            raise c.fail(path, "an ESXi switch aggregates its uplinks with `lag:` (a vDS LAG); "
                         "`bond:` is XenServer's")
        m = c.mapping(raw, path, _VSPHERE_KEYS, none_ok=False)
        name = c.name(m.get("name", "lag1"), (*path, "name"))
        members = c.names(m["uplinks"], (*path, "uplinks")) if "uplinks" in m else uplinks
        for i, u in enumerate(members):
            if u not in uplinks:
                raise c.fail((*path, "uplinks", i), f"{u} is not an uplink of this switch "
                             f"(uplinks: {', '.join(uplinks) or 'none'})")
        config = LagConfig(
            mode="lacp", lacp=_choice(c, m, "mode", path, ("active", "passive"), "passive"),
            rate=_choice(c, m, "timeout", path, ("fast", "slow"), "slow"),
            hashing=_choice(c, m, "load_balance", path, _VSPHERE_HASHES,
                            VSPHERE_DEFAULT_HASH))
    else:
        if key != "bond":
            raise c.fail(path, "a XenServer bridge aggregates its PIFs with `bond:`; `lag:` "
                         "is a vSphere distributed switch's")
        m = c.mapping(raw, path, _XEN_KEYS, none_ok=False)
        name = c.name(m.get("name", "bond0"), (*path, "name"))
        members = uplinks
        mode = _choice(c, m, "mode", path, XEN_BOND_MODES, "balance-slb")
        hashing = _choice(c, m, "hashing_algorithm", path, ("tcpudp_ports", "src_mac"),
                          XEN_DEFAULT_HASH if mode == "lacp" else "src_mac")
        if "hashing_algorithm" in m and mode != "lacp":
            raise c.fail((*path, "hashing_algorithm"), "hashing_algorithm applies to lacp "
                         f"bonds; a {mode} bond places source MACs itself")
        fallback = m.get("lacp_fallback_ab", False)
        if not isinstance(fallback, bool):
            raise c.fail((*path, "lacp_fallback_ab"), "lacp_fallback_ab must be true or false, "
                         f"got {fallback!r}")
        if fallback and mode != "lacp":
            raise c.fail((*path, "lacp_fallback_ab"), "lacp_fallback_ab applies to lacp bonds "
                         f"(other-config:lacp-fallback-ab); this bond is {mode}")
        interval = c.integer(m.get("rebalance_interval", 10_000),
                             (*path, "rebalance_interval"), 0, 86_400_000,
                             "rebalance interval (ms)")
        # an XenServer bond is Open vSwitch's: Marker PDUs are counted, not answered (lib/lacp.c)
        config = LagConfig(mode=mode, rate=_choice(c, m, "lacp_time", path, ("fast", "slow"),
                                                   "slow"),
                           hashing=hashing, rebalance_interval_ms=interval,
                           marker_responder=False, lacp_fallback_ab=fallback)
    if len(members) < 2:
        raise c.fail(path, f"a {'LAG' if htype == 'esxi' else 'bond'} needs at least two "
                     f"uplinks, got {len(members)}")
    if name in uplinks:
        raise c.fail((*path, "name"), f"{name} is the name of an uplink")
    return LagSpec(name, tuple(members), config)


def channels(c: Any, raw: Any, path: PathT, ports: dict[str, Any]) -> tuple[LagSpec, ...]:
    """A physical switch's `channels:`; `ports` are its cabled ports by name (HOST.PIF)."""
    out = []
    taken: dict[str, str] = {}
    for cname, craw in c.mapping(raw, path).items():
        cp = (*path, cname)
        c.name(cname, cp)
        if cname in ports:
            raise c.fail(cp, f"{cname} is the name of a port")
        m = c.mapping(craw, cp, _CHANNEL_KEYS, none_ok=False)
        if "mode" not in m:
            raise c.fail(cp, "a channel needs `mode:` active, passive or on (static)")
        members = c.names(m.get("ports"), (*cp, "ports"))
        if len(members) < 2:
            raise c.fail((*cp, "ports"), "a channel bundles at least two ports")
        for i, p in enumerate(members):
            if p not in ports:
                raise c.fail((*cp, "ports", i), f"no port {p!r} on this switch "
                             f"(ports: {', '.join(ports) or 'none'})")
            if p in taken:
                raise c.fail((*cp, "ports", i), f"{p} is already in channel {taken[p]}")
            taken[p] = cname
        first = ports[members[0]]
        for i, p in enumerate(members[1:], 1):
            other = ports[p]
            if (other.mode, other.vlans, other.vlan, other.mtu) != \
                    (first.mode, first.vlans, first.vlan, first.mtu):
                raise c.fail((*cp, "ports", i), f"{p} has another VLAN mode or MTU than "
                             f"{members[0]}: a switch suspends such a member; make them alike")
        if m["mode"] is True:  # YAML 1.1 reads a bare `on` as true: Cisco's `mode on`
            m["mode"] = "on"
        mode = _choice(c, m, "mode", cp, ("active", "passive", "on"), "on")
        lb = _choice(c, m, "load_balance", cp, tuple(CISCO_HASHES), "src-dst-ip")
        config = LagConfig(mode="static" if mode == "on" else "lacp",
                           lacp="active" if mode == "on" else mode,
                           rate=_choice(c, m, "rate", cp, ("fast", "slow"), "slow"),
                           hashing=CISCO_HASHES[lb])
        out.append(LagSpec(cname, members, config))
    return tuple(out)
