"""Topology keys for traffic filtering and marking (vSphere port groups) and VIF locking and QoS
(XenServer networks and VIFs), checked with the topology's own error reporting
(`file:line: key path: message`).

    port_groups:
      App:
        switch: dvs0
        vlan: 10
        egress_shaping: {average: 10M, peak: 20M, burst: 64K}   # to the VMs (vDS egress)
        traffic_rules:                                            # DvsTrafficRuleset
          - {sequence: 10, action: tag, dscp: 46, cos: 5, direction: incomingPackets,
             description: voice, ip: {protocol: udp, dst_port: 5060}}
          - {sequence: 20, action: drop, ip: {protocol: tcp, dst_port: 23}}
    networks:                                                     # XenServer
      Pool-wide: {switch: xenbr0, default_locking_mode: unlocked}
    vms:
      vm1:
        vifs:
          - network: Pool-wide
            locking_mode: locked
            ipv4_allowed: [10.0.0.5]
            qos_algorithm_type: ratelimit
            qos_algorithm_params: {kbps: 1024}
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from netsim.dataplane.filtering import TrafficRuleset, rule_from_doc
from netsim.dataplane.vifpolicy import LockingMode, VifLocking, VifQos, addresses, locking_mode
from netsim.errors import ConfigError

PathT = tuple[str | int, ...]
Fail = Callable[[PathT, str], Exception]

NET_KEYS = ("egress_shaping", "traffic_rules", "default_locking_mode")
VIF_KEYS = ("locking_mode", "ipv4_allowed", "ipv6_allowed", "qos_algorithm_type",
            "qos_algorithm_params")


def _msg(exc: ConfigError) -> str:
    return str(exc).lstrip(".: ")


def parse_traffic_rules(raw: Any, path: PathT, fail: Fail) -> TrafficRuleset | None:
    """`traffic_rules:` — a list of rules, or `{enabled: false, rules: [...]}`."""
    if raw is None:
        return None
    enabled = True
    rpath = path
    if isinstance(raw, Mapping):
        extra = [k for k in raw if k not in ("enabled", "rules")]
        if extra:
            raise fail((*path, extra[0]), "unknown key (known: enabled, rules)")
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise fail((*path, "enabled"), f"expected true or false, got {enabled!r}")
        rpath = (*path, "rules")
        raw = raw.get("rules") or []
    if not isinstance(raw, list):
        raise fail(rpath, "expected a list of rules")
    rules = []
    for i, r in enumerate(raw):
        try:
            rules.append(rule_from_doc(r, ""))
        except ConfigError as exc:
            raise fail((*rpath, i), _msg(exc)) from None
    try:
        return TrafficRuleset(tuple(rules), enabled)
    except ConfigError as exc:
        raise fail(rpath, _msg(exc)) from None


def parse_locking_default(raw: Any, path: PathT, fail: Fail) -> LockingMode:
    """`default_locking_mode:` of a XenServer network: unlocked (default) or disabled."""
    if raw is None:
        return LockingMode.UNLOCKED
    try:
        mode = locking_mode(raw, "default_locking_mode")
    except ConfigError as exc:
        raise fail(path, _msg(exc)) from None
    if mode not in (LockingMode.UNLOCKED, LockingMode.DISABLED):
        raise fail(path, f"a network's default is unlocked or disabled, not {mode.value}")
    return mode


def parse_vif_policy(f: Mapping[str, Any], path: PathT, fail: Fail
                     ) -> tuple[VifLocking | None, VifQos | None]:
    """A VIF's `locking_mode` / `ipv4_allowed` / `ipv6_allowed` and `qos_algorithm_type` /
    `qos_algorithm_params: {kbps: N}`."""
    locking = None
    if any(f.get(k) is not None for k in ("locking_mode", "ipv4_allowed", "ipv6_allowed")):
        key = "locking_mode"
        try:
            mode = f.get("locking_mode", "network_default")
            key = "ipv4_allowed"
            v4 = addresses(f.get("ipv4_allowed"))
            key = "ipv6_allowed"
            v6 = addresses(f.get("ipv6_allowed"))
            key = "locking_mode" if "locking_mode" in f else key
            locking = VifLocking(mode, v4, v6)
        except ConfigError as exc:
            where = next((k for k in ("locking_mode", "ipv4_allowed", "ipv6_allowed")
                          if str(exc).startswith(k)), key)
            raise fail((*path, where), _msg(exc).removeprefix(where).lstrip(": ")) from None
    qos = None
    qtype, params = f.get("qos_algorithm_type"), f.get("qos_algorithm_params")
    if qtype is not None or params is not None:
        if qtype != "ratelimit":
            raise fail((*path, "qos_algorithm_type"),
                       f"{qtype!r}: XenServer's only VIF QoS algorithm is ratelimit")
        if not isinstance(params, Mapping) or "kbps" not in params:
            raise fail((*path, "qos_algorithm_params"),
                       "ratelimit needs qos_algorithm_params: {kbps: N} (kilobytes/s)")
        kbps = params["kbps"]
        if isinstance(kbps, str) and kbps.strip().isdigit():
            kbps = int(kbps)  # xe passes it as text
        try:
            qos = VifQos(kbps)
        except ConfigError as exc:
            raise fail((*path, "qos_algorithm_params", "kbps"), _msg(exc)) from None
    return locking, qos


def policy_label(net: Any) -> str:
    """`hvsim draw` lines of a port group / network: egress shaping, traffic rules, locking
    default (empty when none is set)."""
    out = ""
    eg = getattr(net, "egress_shaping", None)
    if eg is not None:
        out += f"\negress shaped {eg.average_bps / 1e6:g} Mbit/s"
    rules = getattr(net, "traffic_rules", None)
    if rules is not None and rules.rules:
        acts = sorted({r.action.value for r in rules.rules})
        out += f"\n{len(rules.rules)} traffic rule{'s' if len(rules.rules) != 1 else ''}" \
               f" ({', '.join(acts)})" + ("" if rules.enabled else " disabled")
    mode = getattr(net, "default_locking_mode", "unlocked")
    if mode != "unlocked":
        out += f"\ndefault locking: {mode}"
    return out


def vif_label(vm: Any) -> str:
    """`hvsim draw` lines of a VM: each VIF's locking and QoS (empty when none is set)."""
    out = ""
    for f in vm.vifs:
        lock, qos = getattr(f, "locking", None), getattr(f, "qos", None)
        if lock is not None:
            ips = ",".join((*lock.ipv4_allowed, *lock.ipv6_allowed))
            out += f"\n{f.port} {lock.mode.value}" + (f" {ips}" if ips else "")
        if qos is not None:
            out += f"\n{f.port} ratelimit {qos.kbps} KB/s"
    return out
