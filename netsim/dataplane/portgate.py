"""The per-port policy gates of a VM port: what a frame passes between the vNIC and its port,
in each direction, beyond VLAN and security handling.

Into the switch (from the VM), in this order: a disabled VIF drops everything
(`vif-disabled`); VIF locking (`vif-locked`); VIF QoS rate limit (`vif-qos`); the port group's
traffic filtering and marking rules (`filtered`, or a DSCP/CoS mark). Out of the switch (to the
VM): a disabled VIF; the rules. An uplink has gates with the uplink port group's traffic rules
only (in = from the network, out = to it). The switch (`netsim.dataplane.switch`) calls a gate
only for ports that have one, so ports without policies keep the fast path.
"""
from __future__ import annotations

from typing import Any

from netsim.dataplane.filtering import Direction, RuleAction, RuleMatcher, TrafficRuleset, mark
from netsim.dataplane.shaper import Shaper
from netsim.dataplane.vifpolicy import LockChecker, LockingMode, VifLocking, VifQos

_DROP, _TAG = RuleAction.DROP, RuleAction.TAG


class RxGate:
    """Checks on frames from the VM: `gate(port, frame, vid, pcp, size, now)` returns the
    same `frame` object when it passes unchanged, a (re-marked frame, priority) tuple when a
    tag rule marked it, or None when it dropped (and counted) the frame. `vid` is the guest's
    own VLAN tag (VGT), 0 when it sent none."""

    __slots__ = ("disabled", "lock", "qos", "rules")

    def __init__(self, *, disabled: bool, lock: LockChecker | None, qos: Shaper | None,
                 rules: RuleMatcher | None) -> None:
        self.disabled = disabled
        self.lock = lock
        self.qos = qos
        self.rules = rules

    def __call__(self, port: Any, f: bytes, vid: int, pcp: int, n: int, now: int
                 ) -> bytes | tuple[bytes, int] | None:
        if self.disabled:
            port.counters.drop("vif-disabled", 1, f)
            return None
        lock = self.lock
        if lock is not None and lock.refuse(f):
            port.counters.drop("vif-locked", 1, f)
            return None
        qos = self.qos
        if qos is not None and not qos.conform(n, now):
            port.counters.drop("vif-qos", 1, f)
            return None
        rules = self.rules
        if rules is not None:
            r = rules.match(f, vid)
            if r is not None:
                if r.action is _DROP:
                    port.counters.drop("filtered", 1, f)
                    return None
                if r.action is _TAG:
                    return mark(r, f, pcp)
        return f


class RulesRxGate(RxGate):
    """An RxGate with traffic rules only (the common vDS case): the same checks, fewer steps."""

    __slots__ = ("_fn",)

    def __init__(self, rules: RuleMatcher) -> None:
        super().__init__(disabled=False, lock=None, qos=None, rules=rules)
        self._fn = rules.fn

    def __call__(self, port: Any, f: bytes, vid: int, pcp: int, n: int, now: int
                 ) -> bytes | tuple[bytes, int] | None:
        i = self._fn(f, vid)  # the switch passes frames of 14 bytes and more
        if i < 0:
            return f
        rules = self.rules
        rules.hits[i] += 1
        r = rules.last = rules.rules[i]
        if r.action is RuleAction.ACCEPT:
            return f
        if r.action is _DROP:
            port.counters.drop("filtered", 1, f)
            return None
        return mark(r, f, pcp)


class TxGate:
    """Checks on frames to the VM: `gate(port, untagged, frame, vid, pcp)` returns the frame
    to send (re-marked if a rule says so) or None when it dropped (and counted) it."""

    __slots__ = ("disabled", "rules")

    def __init__(self, *, disabled: bool, rules: RuleMatcher | None) -> None:
        self.disabled = disabled
        self.rules = rules

    def __call__(self, port: Any, inner: bytes, f: bytes, vid: int, pcp: int) -> bytes | None:
        if self.disabled:
            port.counters.drop("vif-disabled", 1, f)
            return None
        rules = self.rules
        r = rules.match(inner, vid) if rules is not None else None
        if r is None or r.action is RuleAction.ACCEPT:
            return f
        if r.action is _DROP:
            port.counters.drop("filtered", 1, f)
            return None
        new, npcp = mark(r, inner, pcp)
        if f is inner:
            return new
        tpid = b"\x88\xa8" if npcp & 8 else b"\x81\x00"
        tci = ((npcp & 7) << 13) | vid
        return new[:12] + tpid + tci.to_bytes(2, "big") + new[12:]


def build_gates(
    *,
    mac: bytes,
    rules: TrafficRuleset | None,
    locking: VifLocking | None,
    network_default: LockingMode,
    qos: VifQos | None,
    now_ns: int,
) -> tuple[RxGate | None, TxGate | None]:
    """The gates of one VM port from its port group's rules and its VIF policies; (None, None)
    when nothing applies."""
    mode = locking.effective(network_default) if locking is not None else network_default
    if mode is LockingMode.NETWORK_DEFAULT:
        mode = LockingMode.UNLOCKED
    disabled = mode is LockingMode.DISABLED
    lock = LockChecker(locking or VifLocking(), mac) if mode is LockingMode.LOCKED else None
    shaper = Shaper(qos.shaping(), now_ns) if qos is not None else None
    rin = rules.matcher(Direction.INCOMING) if rules is not None else None
    rout = rules.matcher(Direction.OUTGOING) if rules is not None else None
    rx: RxGate | None = None
    if disabled or lock is not None or shaper is not None:
        rx = RxGate(disabled=disabled, lock=lock, qos=shaper, rules=rin)
    elif rin is not None:
        rx = RulesRxGate(rin)
    tx = TxGate(disabled=True, rules=None) if disabled else (
        TxGate(disabled=False, rules=rout) if rout is not None else None)
    return rx, tx


_ROLE_UPLINK = 2  # netsim.dataplane.switch.ROLE_UPLINK (that module imports this one)


def _where(port: Any, group: Any) -> str:
    if group is not None:
        return f"port group {group.name!r}"
    if getattr(port, "sw_role", None) == _ROLE_UPLINK:
        return "uplink port group"
    return f"port {port.name}"


def explain(port: Any) -> list[str]:
    """Lines for `hvsim trace`: the policies a frame from this (VM) port meets on its way into
    the switch (rules toward a VM show up as matches, see `matched_since`)."""
    out = []
    group = getattr(port, "sw_group", None)
    where = _where(port, group)
    pol = getattr(port, "sw_vif_policy", None)
    default = getattr(group, "default_locking_mode", LockingMode.UNLOCKED)
    if pol is not None and pol[0] is not None:
        out.append(f"{port.name} {pol[0].describe(LockingMode(default))}")
    elif default is not LockingMode.UNLOCKED and group is not None:
        out.append(f"{where} default_locking_mode={LockingMode(default).value}")
    if pol is not None and pol[1] is not None:
        out.append(f"{port.name} {pol[1].describe()}")
    rules = getattr(getattr(port, "sw_rx_gate", None), "rules", None)
    if rules is not None:  # the rules frames from this port (VM or uplink) meet
        out.append(f"{where} traffic rules: " + "; ".join(r.describe() for r in rules.rules))
    return out


def drop_cause(port: Any, reason: str) -> str | None:
    """The setting behind a `filtered` / `vif-*` drop at `port`, or None for other reasons."""
    group = getattr(port, "sw_group", None)
    where = _where(port, group)
    pol = getattr(port, "sw_vif_policy", None) or (None, None)
    default = LockingMode(getattr(group, "default_locking_mode", LockingMode.UNLOCKED))
    if reason == "filtered":
        for gate in (getattr(port, "sw_rx_gate", None), getattr(port, "sw_tx_gate", None)):
            rules = getattr(gate, "rules", None)
            if rules is not None and rules.last is not None and \
                    rules.last.action is RuleAction.DROP:
                return f"{port.name}: {where} traffic {rules.last.describe()}"
        return f"{port.name}: {where} traffic rules"
    if reason == "vif-locked":
        lock = pol[0] or VifLocking()
        return f"{port.name}: VIF {lock.describe(default)}: source not allowed"
    if reason == "vif-disabled":
        lock = pol[0] or VifLocking()
        return f"{port.name}: VIF {lock.describe(default)}: all traffic dropped"
    if reason == "vif-qos" and pol[1] is not None:
        return f"{port.name}: VIF {pol[1].describe()} exceeded"
    return None


def port_rule_counters(port: Any) -> dict[str, dict[str, int]]:
    """Matches per traffic rule of a port, `{"in": {"10": n, ...}, "out": {...}}` (sequence
    numbers as text, for JSON); empty when the port has no rules."""
    out = {}
    for way, gate in (("in", getattr(port, "sw_rx_gate", None)),
                      ("out", getattr(port, "sw_tx_gate", None))):
        rules = getattr(gate, "rules", None)
        if rules is not None:
            out[way] = {str(k): v for k, v in rules.counters().items()}
    return out


def rule_hits(ports: Any) -> dict[tuple[Any, str], tuple[int, ...]]:
    """Every rule's match count on `ports`, by (port, "in"/"out"): compare two of these to see
    which rules a frame matched (`matched_since`)."""
    out = {}
    for p in ports:
        for way, gate in (("in", getattr(p, "sw_rx_gate", None)),
                          ("out", getattr(p, "sw_tx_gate", None))):
            rules = getattr(gate, "rules", None)
            if rules is not None:
                out[(p, way)] = tuple(rules.hits)
    return out


def matched_since(before: dict[tuple[Any, str], tuple[int, ...]]) -> list[str]:
    """Lines naming each rule that matched since `before` was taken: where, which way, which
    rule (sequence, description, action)."""
    out = []
    for (p, way), counts in before.items():
        gate = p.sw_rx_gate if way == "in" else p.sw_tx_gate
        rules = getattr(gate, "rules", None)
        if rules is None:
            continue
        for r, n, m in zip(rules.rules, rules.hits, counts, strict=False):
            if n > m:
                if getattr(p, "sw_role", None) == _ROLE_UPLINK:  # uplink port group
                    arrow = "from the network" if way == "in" else "to the network"
                else:
                    arrow = "from the VM" if way == "in" else "to the VM"
                out.append(f"{p.name} ({arrow}): {r.describe()}")
    return out
