"""Switches: the learning 802.1Q bridge, and the vSphere standard switch built on it.

The pipeline of one frame, run synchronously by `Bridge.ingress(port, frame)` when the frame
arrives (the one asyncio hop is the output port's queue; see DESIGN.md §2):

    sanity (runt, cut tag, oversize, multicast source)
    → VLAN classify (the port's access/trunk/native mode)
    → security (forged transmits)                         [StandardSwitch, VM ports]
    → ingress shaping (egress from the VM)                [port group shaping]
    → VIF locking / QoS, traffic rules (drop or mark)     [portgate.RxGate]
    → learn (VLAN, source MAC) → port; mirror ingress
    → lookup (VLAN, destination MAC): one port, or the flood domain of the VLAN
    → per output port: filters (promiscuous, MAC changes, uplink rules), VLAN tag/untag,
      traffic rules toward the VM [portgate.TxGate], egress shaping, mirror egress, enqueue.

Every rejected frame is counted on a port under a `DROP_REASONS` name; nothing about a frame's
contents can raise out of `ingress`. Frames stay `bytes`; tags are added and removed by slicing.

`PhysicalSwitch` is a plain IEEE 802.1Q learning bridge (the physical network). `StandardSwitch`
adds vSphere port groups (VLAN ID 0 EST / 1-4094 VST / 4095 VGT, security, shaping), uplinks with
NIC teaming (route based on originating virtual port; active/standby; failover on link down),
and the vSwitch rules: frames from one uplink never go out another, a vNIC that is not
promiscuous only receives unicast for its own MAC.

Tags are handled as by Open vSwitch (ovs-vswitchd.conf.db(5), i.e. vswitch.xml: Port
`vlan_mode`, `tag`, `trunks`; Open_vSwitch `other_config:vlan-limit`), as recorded from a real
OVS 3.1 with the userspace datapath (tests/interop/test_vlan_ovs.py compares every case):
- vlan-limit "limits the number of VLAN headers that can be matched ... further VLAN headers
  will be treated as payload", and its default "is currently 1": only the outer tag is a VLAN.
  Only TPIDs 0x8100 and 0x88a8 make one; a 0x9100 "tag" is an ethertype, so such a frame is
  untagged. Inner tags are payload and are never looked at or changed.
- A priority tag (VID 0) classifies like no tag: the frame joins the port's VLAN. Leaving
  tagged, it gets that VLAN's tag with the arriving PCP and TPID (0x88a8 stays 0x88a8); leaving
  untagged, the tag is removed - exposing an inner tag to the next switch (double tagging).
- A kept tag keeps its TPID; a tag added to an untagged arrival is 0x8100. DEI is not kept.
  A frame in VLAN 0 with PCP 0 leaves untagged, whether it arrived untagged or priority-tagged.
- native-tagged/native-untagged ports never carry VLAN 0 (OVS bundle_set: "prohibit trunking
  VLAN 0"), so untagged frames from a plain trunk do not leave them.
Where we differ: VID 4095 (reserved by 802.1Q) is dropped as vlan-not-allowed; OVS trunks it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netsim.clock import Clock, RealClock
from netsim.dataplane.filtering import TrafficRuleset
from netsim.dataplane.mac_table import (
    DEFAULT_AGING_S,
    DEFAULT_SIZE,
    GARP_LOCK_S,
    NO_SPACE,
    MacEntry,
    MacTable,
)
from netsim.dataplane.macflap import MacFlapLog
from netsim.dataplane.policy import (
    LoadBalancing,
    SecurityPolicy,
    ShapingPolicy,
    TeamingPolicy,
    VlanMode,
    VlanPolicy,
    check_vlan,
    port_group_vlan,
)
from netsim.dataplane.port import Pif, Port, VmPort
from netsim.dataplane.portgate import build_gates
from netsim.dataplane.pvlan import PvlanMap
from netsim.dataplane.shaper import Shaper
from netsim.dataplane.teaming import ip_hash_index, rarp_announce, src_mac_index
from netsim.dataplane.vifpolicy import LockingMode, VifLocking, VifQos, locking_mode
from netsim.errors import ConfigError
from netsim.wire.frame import arp_is_gratuitous

_UNSET: Any = object()
_GARP_LOCK_NS = int(GARP_LOCK_S * 1_000_000_000)  # MacTable.learn's lock after a GARP

# Port roles on a switch.
ROLE_BRIDGE = 0  # a port of a physical 802.1Q bridge
ROLE_VM = 1  # a vNIC's port on a vSwitch
ROLE_UPLINK = 2  # a vSwitch uplink (PIF)

_MODE_CODE = {
    VlanMode.ACCESS: 0,
    VlanMode.TRUNK: 1,
    VlanMode.NATIVE_TAGGED: 2,
    VlanMode.NATIVE_UNTAGGED: 3,
}
_ACCESS, _TRUNK = 0, 1
#: Slow Protocols (LACP, Marker, OAM) group address: consumed by the link, never forwarded
_SLOW_PROTOCOLS = bytes.fromhex("0180c2000002")
_TAGS: dict[int, bytes] = {}  # (pcp | 802.1ad bit) << 13 | VID -> the 4 tag bytes, built once
#: EtherType ARP and an Ethernet/IPv4 ARP request's fixed header: bytes 12..21 of an untagged one
_ARP_REQUEST_HDR = b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01"



def _check_mtu(mtu: int | None, what: str) -> int | None:
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 9216:
        raise ConfigError(f"{what}: mtu {mtu!r} must be between 68 and 9216 (jumbo: 9000)")
    return mtu


def _tag_bytes(key: int) -> bytes:
    """The 4 tag bytes for a key of `_TAGS`: TPID 0x88a8 if bit 16 (pcp bit 3) is set."""
    tpid = (0x88, 0xA8) if key & 0x10000 else (0x81, 0x00)
    return bytes((*tpid, (key >> 8) & 0xFF, key & 0xFF))


class Bridge:
    """A learning 802.1Q bridge: ports with VLAN modes, a (VLAN, MAC) table, flooding within the
    VLAN. Base of `PhysicalSwitch` and `StandardSwitch`."""

    def __init__(
        self,
        name: str,
        *,
        clock: Clock | None = None,
        mac_table_size: int = DEFAULT_SIZE,
        aging_s: float = DEFAULT_AGING_S,
        mtu: int | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError(f"switch name {name!r} must be a non-empty string")
        self.name = name
        self._mtu = _check_mtu(mtu, f"switch {name}")
        self.clock: Clock = clock if clock is not None else RealClock()
        self.mac_table: MacTable[Port] = MacTable(size=mac_table_size, aging_s=aging_s)
        self.ports: dict[str, Port] = {}
        self._flood: dict[int, tuple[Port, ...]] = {}
        self._next_id = 0
        self._now = self.clock.now_ns
        # The pipeline reads the table's entries directly for the common cases (source already
        # learned on this port; destination known and fresh): two method calls less per frame.
        self._mac_get = self.mac_table.get_entry
        self._aging_ns = self.mac_table.aging_ns
        self._pvlan = PvlanMap()
        # private VLAN → its primary, whose MAC table it shares; empty without PVLANs, so the
        # pipeline pays one truth test for them
        self._fids: dict[int, int] = {}
        #: MAC moves between ports (flapping), as the table reports them
        self.mac_flaps = MacFlapLog()
        self.mac_table.on_move = self.mac_flaps.record
        #: VLAN → handler(port, inner, tagged, vid, pcp, now) taking every frame of that VLAN
        #: instead of learning and forwarding: RSPAN VLANs (`netsim.dataplane.mirror`)
        self.span_vlans: dict[int, Any] = {}
        #: mirroring sessions by name, and the IPFIX flow meter, set up on this switch (for
        #: counters, `hvsim draw` and `hvsim trace`)
        self.mirror_sessions: dict[str, Any] = {}
        self.flow_meter: Any = None

    # -- private VLANs ------------------------------------------------------------------------
    @property
    def pvlan(self) -> PvlanMap:
        """The private VLAN map (`VMwareDVSPvlanMapEntry` list); empty = no PVLANs."""
        return self._pvlan

    @pvlan.setter
    def pvlan(self, pmap: PvlanMap) -> None:
        if not isinstance(pmap, PvlanMap):
            raise ConfigError(f"{self.name}: pvlan must be a PvlanMap, not {pmap!r}")
        self._pvlan = pmap
        self._fids = pmap.fids()
        self.mac_table.flush()
        for p in self.ports.values():
            self._set_vlan(p, p.sw_vlan)
        self._changed()

    def learning_vlan(self, vid: int) -> int:
        """The VLAN whose MAC table `vid` learns in: its primary if private, else itself."""
        return self._fids.get(vid, vid)

    def receives(self, port: Port, vid: int) -> bool:
        """True if frames of VLAN `vid` may leave the switch by `port` (VLAN mode and, for a
        private VLAN host port, the PVLAN reach rules)."""
        rx = port.sw_pvlan_rx
        if rx is not None:
            return vid in rx
        return port.sw_vlan.carries(vid)

    # -- configuration -----------------------------------------------------------------------
    def _attach(self, port: Port, vlan: VlanPolicy, role: int) -> Port:
        if not isinstance(port, Port):
            raise ConfigError(f"{self.name}: can only attach a Port, not {port!r}")
        if port.switch is not None:
            raise ConfigError(
                f"{self.name}: port {port.name} is already attached to switch {port.switch.name}"
            )
        if port.name in self.ports:
            raise ConfigError(f"{self.name}: a port named {port.name} is already attached")
        port.switch = self
        port.sw_role = role
        port.sw_id = self._next_id
        self._next_id += 1
        port.sw_forged_ok = True
        port.sw_promisc = True
        port.sw_mac_changes_ok = True
        port.sw_shaper = None
        port.sw_egress_shaper = None
        port.sw_mac_limit = 0
        port.sw_mirror_rx = ()
        port.sw_mirror_tx = ()
        port.sw_check_reflect = False
        port.sw_block_reason = "blocked"
        port.sw_rx_gate = None  # VIF locking/QoS, traffic rules (netsim.dataplane.portgate)
        port.sw_tx_gate = None
        self._rx_checks(port)
        port.refresh()
        self._set_vlan(port, vlan)
        self.ports[port.name] = port
        self._mtu_changed()
        port.on_link_change(self._link_changed)
        self._changed()
        return port

    @staticmethod
    def _rx_checks(port: Port) -> None:
        port.sw_rx_checks = bool(
            not port.sw_forged_ok or port.sw_shaper is not None or port.sw_check_reflect
            or port.sw_mirror_rx or port.sw_blocked or port.sw_discovery is not None
            or port.sw_rx_gate is not None
        )

    # -- blocking and MTU ---------------------------------------------------------------------
    def block(self, port: Port | str, blocked: bool = True, *, reason: str = "blocked") -> None:
        """Block a port (vSphere `DVPortSetting.blocked`): every frame arriving on it or
        leaving by it is dropped and counted as `reason`; unblock with `blocked=False`.
        Mirrored copies still reach it (a mirror destination without normal I/O)."""
        p = self._port(port)
        p.sw_blocked = bool(blocked)
        p.sw_block_reason = reason
        if blocked:
            self.mac_table.flush(p)
        self._rx_checks(p)
        p.refresh()
        self._changed()

    def set_port_mtu(self, port: Port | str, mtu: int) -> None:
        """Change one port's MTU (a PIF's, a physical port's, a vNIC's) at run time."""
        p = self._port(port)
        _check_mtu(mtu, f"{self.name}: port {p.name}")
        p.mtu = mtu
        self._mtu_changed()

    def set_discovery(self, port: Port | str, hook: Any) -> None:
        """Give CDP/LLDP frames arriving on `port` to `hook(frame) -> consumed?` (a
        `LinkDiscovery.receive`) before switching; None removes it."""
        p = self._port(port)
        p.sw_discovery = hook
        self._rx_checks(p)

    @property
    def mtu(self) -> int | None:
        """The switch's MTU (vSS `mtu`, vDS `maxMtu`): no port passes bigger frames; None =
        each port's own."""
        return self._mtu

    @mtu.setter
    def mtu(self, value: int | None) -> None:
        self._mtu = _check_mtu(value, f"switch {self.name}")
        self._mtu_changed()

    def port_mtu(self, port: Port) -> int:
        """The MTU a port passes: the smallest of its own, its port group's and the switch's."""
        mtu = port.mtu
        group_mtu = getattr(getattr(port, "sw_group", None), "mtu", None)
        for cap in (self._mtu, group_mtu):
            if cap is not None and cap < mtu:
                mtu = cap
        return mtu

    def _mtu_changed(self) -> None:
        """Recompute every port's size limits; a port whose MTU is below the switch's biggest
        has its outgoing frames checked (off the fast path only then)."""
        mtus = {p: self.port_mtu(p) for p in self.ports.values()}
        top = max(mtus.values(), default=0)
        for p, m in mtus.items():
            p.sw_max_untagged = 14 + m
            p.sw_max_tagged = 18 + m
            check = m < top
            if check != p.sw_mtu_check:
                p.sw_mtu_check = check
                p.refresh()

    def _set_vlan(self, port: Port, vlan: VlanPolicy) -> None:
        if not isinstance(vlan, VlanPolicy):
            raise ConfigError(f"{self.name}/{port.name}: vlan must be a VlanPolicy, not {vlan!r}")
        mode = _MODE_CODE[vlan.mode]
        port.sw_vlan = vlan
        port.sw_mode = mode
        if mode == _ACCESS:
            port.sw_pvid, port.sw_allowed, port.sw_untagged_vid = vlan.vlan, None, vlan.vlan
            port.sw_untagged_ok = True
        elif mode == _TRUNK:
            port.sw_pvid, port.sw_untagged_vid = 0, 0
            port.sw_allowed = vlan.trunks or None
            port.sw_untagged_ok = not vlan.trunks or 0 in vlan.trunks
        else:
            port.sw_pvid = vlan.vlan
            port.sw_allowed = (vlan.trunks | {vlan.vlan}) if vlan.trunks else None
            port.sw_untagged_vid = vlan.vlan if vlan.mode is VlanMode.NATIVE_UNTAGGED else -1
            port.sw_untagged_ok = True
        if mode == _ACCESS:
            port.sw_carry = frozenset({vlan.vlan})
        elif mode != _TRUNK and vlan.vlan:  # native modes never carry VLAN 0 (as OVS)
            port.sw_carry = frozenset(v for v in range(1, 4095) if vlan.carries(v))
        else:
            port.sw_carry = port.sw_allowed
        # A host port (access) in a private VLAN receives what the PVLAN map says, untagged.
        pv = self._pvlan
        port.sw_pvlan_rx = pv.receives(vlan.vlan) if mode == _ACCESS and vlan.vlan in pv else None
        if port.sw_pvlan_rx is not None:
            port.sw_carry = port.sw_pvlan_rx

    def set_vlan(self, port: Port | str, vlan: VlanPolicy) -> None:
        """Change a port's VLAN mode; its learned MACs are forgotten."""
        p = self._port(port)
        self._set_vlan(p, vlan)
        self.mac_table.flush(p)
        self._changed()

    def detach(self, port: Port | str) -> None:
        """Remove a port from the switch, forgetting what was learned on it."""
        p = self._port(port)
        del self.ports[p.name]
        self.mac_table.flush(p)
        p.off_link_change(self._link_changed)
        p.switch = None
        if p.sw_mtu_check:
            p.sw_mtu_check = False
            p.refresh()
        self._mtu_changed()
        self._changed()

    def mirror(
        self,
        sources: Iterable[Port | str],
        destination: Port | str | Any,
        *,
        ingress: bool = True,
        egress: bool = True,
    ) -> None:
        """Port mirroring: copy every frame entering (`ingress`) and/or leaving (`egress`) the
        source ports, as it crosses them, to `destination` (which need not carry the VLAN):
        a port, or a sink with `transmit(frame)` (a `netsim.dataplane.mirror` session side)."""
        dest = destination if not isinstance(destination, (str, Port)) else self._port(
            destination)
        for s in sources:
            p = self._port(s)
            if p is dest:
                raise ConfigError(f"{self.name}: port {p.name} cannot mirror to itself")
            if ingress:
                p.sw_mirror_rx = (*p.sw_mirror_rx, dest)
                self._rx_checks(p)
            if egress:
                p.sw_mirror_tx = (*p.sw_mirror_tx, dest)
                p.refresh()

    def unmirror(self, stop: Any) -> None:
        """Stop mirroring to every destination (port or sink) for which `stop(dest)` is true."""
        for p in self.ports.values():
            rx = tuple(m for m in p.sw_mirror_rx if not stop(m))
            tx = tuple(m for m in p.sw_mirror_tx if not stop(m))
            if rx != p.sw_mirror_rx or tx != p.sw_mirror_tx:
                p.sw_mirror_rx, p.sw_mirror_tx = rx, tx
                self._rx_checks(p)
                p.refresh()

    def set_egress_shaping(self, port: Port | str, shaping: ShapingPolicy | None) -> None:
        """Shape frames leaving the switch through `port` (vDS-style egress shaping)."""
        p = self._port(port)
        p.sw_egress_shaper = Shaper(shaping, self._now()) if shaping is not None else None
        p.refresh()

    def _port(self, port: Port | str) -> Port:
        name = port if isinstance(port, str) else port.name
        p = self.ports.get(name)
        if p is None or (not isinstance(port, str) and p is not port):
            raise ConfigError(f"{self.name}: no port {name!r} on this switch")
        return p

    def _changed(self) -> None:
        self._flood.clear()

    def _link_changed(self, port: Port) -> None:
        if not port.link_up:
            self.mac_table.flush(port)
        self._changed()

    def _members(self, vid: int) -> tuple[Port, ...]:
        members = tuple(p for p in self.ports.values() if self.receives(p, vid))
        self._flood[vid] = members
        return members

    def mac_entries(self) -> list[MacEntry]:
        """The live MAC table now (VLAN, MAC, port, age), sorted by VLAN then MAC."""
        return self.mac_table.entries(self._now())

    def port_counters(self) -> dict[str, dict[str, Any]]:
        """Every port's counters, by port name."""
        return {name: p.counters.as_dict() for name, p in self.ports.items()}

    # -- the pipeline ------------------------------------------------------------------------
    def ingress(self, port: Port, frame: bytes, now: int | None = None) -> Port | None:
        """Switch one frame that arrived on `port` (at `now`, default: the clock's now). Call
        `port.receive(frame)` to inject a frame: it counts and taps the arrival, then calls
        this. Returns the one port a known unicast frame was switched to (None for floods and
        drops): `ingress_batch` reuses that decision for the frames that follow it."""
        c = port.counters
        n = len(frame)
        if n < 14:
            c.drop("runt")
            return
        b12 = frame[12]
        if (b12 == 0x81 and frame[13] == 0x00) or (b12 == 0x88 and frame[13] == 0xA8):
            # Only the outer 802.1Q or 802.1ad tag classifies (OVS's default vlan-limit=1;
            # see the module docstring); what follows it, inner tags included, is payload.
            if n < 18:
                c.drop("malformed")
                return
            if n > port.sw_max_tagged:
                c.drop("oversize")
                return
            tci = (frame[14] << 8) | frame[15]
            vid = tci & 0x0FFF
            # `pcp` carries the tag's priority and, in bit 3, "802.1ad": a tag this frame gets
            # on egress keeps the TPID it arrived with, as OVS does.
            pcp = (tci >> 13) | (8 if b12 == 0x88 else 0)
            inner = frame[:12] + frame[16:]
            if vid == 0:  # priority tag: classified by the port, as if untagged
                if not port.sw_untagged_ok:
                    c.drop("vlan-not-allowed")
                    return
                vid = port.sw_pvid
                tagged = None
            elif port.sw_mode == _ACCESS:
                c.drop("tagged-on-access")
                return
            else:
                allowed = port.sw_allowed
                if vid == 4095 or (allowed is not None and vid not in allowed):
                    c.drop("vlan-not-allowed")
                    return
                tagged = frame if tci & 0x1000 == 0 else None
        else:
            if n > port.sw_max_untagged:
                c.drop("oversize")
                return
            if not port.sw_untagged_ok:
                c.drop("vlan-not-allowed")
                return
            vid = port.sw_pvid
            pcp = 0
            inner = frame
            tagged = None
        if frame[6] & 1:
            c.drop("malformed")
            return
        if now is None:
            now = self._now()
        src = frame[6:12]
        if port.sw_rx_checks:  # blocked, forged transmits Reject, shaping, reflection, mirroring
            if port.sw_blocked:
                c.drop(port.sw_block_reason)
                return
            if frame[0] & 1 and port.sw_discovery is not None and port.sw_discovery(frame):
                return  # CDP/LLDP: its agent's, never switched (netsim.dataplane.discovery)
            if not port.sw_forged_ok and src != port.vnic.mac:
                c.drop("forged-source")
                return
            shaper = port.sw_shaper
            if shaper is not None and not shaper.conform(n, now):
                c.drop("shaped")
                return
            if port.sw_check_reflect and inner[12] == 0x89 and inner[13] == 0x22 and \
                    self._control_rx(port, inner, vid, now):
                return None  # a beacon / health-check frame, for the switch itself
            if port.sw_check_reflect and self._reflected(vid, src, now):
                c.drop("reflected")
                return
            gate = port.sw_rx_gate
            if gate is not None:  # VIF locking/QoS, traffic filtering and marking
                passed = gate(port, inner, vid if port.sw_mode else 0, pcp, n, now)
                if passed is not inner:
                    if passed is None:
                        return
                    inner, pcp = passed  # marked (DSCP/CoS): the tag is built anew
                    tagged = None
            if port.sw_mirror_rx:
                for m in port.sw_mirror_rx:
                    m.transmit(frame)
        if self.span_vlans and vid in self.span_vlans:  # RSPAN: see netsim.dataplane.mirror
            return self.span_vlans[vid](port, inner, tagged, vid, pcp, now)
        key = (self._fids.get(vid, vid), src) if self._fids else (vid, src)
        e = self._mac_get(key)
        arp = inner[12] == 0x08 and inner[13] == 0x06
        if e is not None and e.port is port:
            e.last_ns = now  # known here already: refresh (MacTable.learn's first branch)
            e.lru.move_to_end(key)
            if arp and arp_is_gratuitous(inner, 14):
                e.locked_until_ns = now + _GARP_LOCK_NS
        elif self.mac_table.learn(
            key[0], src, port, now, garp=arp and arp_is_gratuitous(inner, 14),
            limit=port.sw_mac_limit,
        ) == NO_SPACE:
            c.drop("no-learn-space")
            return None
        return self._forward(port, inner, tagged, vid, pcp, now)

    def flood_unlearned(self, port: Port, inner: bytes, tagged: bytes | None, vid: int,
                        pcp: int, now: int) -> None:
        """Send a frame to every port carrying `vid` except `port`, learning nothing: how a
        switch carries an RSPAN VLAN (Cisco `remote-span`: no MAC learning, so mirrored copies
        of two stations' traffic always reach the destination switch)."""
        members = self._flood.get(vid)
        if members is None:
            members = self._members(vid)
        sent = False
        for out in members:
            if out is not port:
                tagged = self._emit(out, inner, tagged, vid, pcp, now)
                sent = True
        if not sent:
            port.counters.drop("no-destination")

    def _reflected(self, vid: int, src: bytes, now: int) -> bool:
        return False

    def _control_rx(self, port: Port, inner: bytes, vid: int, now: int) -> bool:
        return False

    def _lookup(self, vid: int, mac: bytes, now: int) -> Port | None:
        e = self._mac_get((vid, mac))
        if e is None:
            return None
        if now - e.last_ns > self._aging_ns:
            self.mac_table.lookup(vid, mac, now)  # removes the aged-out entry
            return None
        return e.port

    def _forward(
        self, port: Port, inner: bytes, tagged: bytes | None, vid: int, pcp: int, now: int
    ) -> Port | None:
        if not inner[0] & 1:
            out = self._lookup(self._fids.get(vid, vid) if self._fids else vid, inner[0:6], now)
            if out is not None:
                if out is port:
                    port.counters.drop("same-port")
                    return None
                if out.sw_pvlan_rx is not None:
                    if vid not in out.sw_pvlan_rx:
                        out.counters.drop("pvlan")
                        return None
                    self._emit(out, inner, None, out.sw_pvid, pcp, now)
                    return out
                self._emit(out, inner, tagged, vid, pcp, now)
                return out
        if inner[0] == 0x01 and inner[:6] == _SLOW_PROTOCOLS:
            port.counters.drop("slow-protocols")  # never forwarded by a bridge (802.3 57A)
            return None
        members = self._flood.get(vid)
        if members is None:
            members = self._members(vid)
        sent = False
        for out in members:
            if out is not port:
                if out.sw_pvlan_rx is not None:  # leaves untagged, in the port's own VLAN
                    self._emit(out, inner, None, out.sw_pvid, pcp, now)
                else:
                    tagged = self._emit(out, inner, tagged, vid, pcp, now)
                sent = True
        if not sent:
            port.counters.drop("no-destination")
        return None

    def _to_port(
        self,
        out: Port,
        dst: bytes | None,
        inner: bytes,
        tagged: bytes | None,
        vid: int,
        pcp: int,
        now: int,
    ) -> bytes | None:
        """Send to one output port (with its per-port checks: none on a plain bridge)."""
        return self._emit(out, inner, tagged, vid, pcp, now)

    def ingress_batch(self, port: Port, frames: Sequence[bytes]) -> None:
        """Switch frames that arrived on `port`, in order: what `ingress` does to each, at one
        clock reading for the batch, with the decision for a run of frames between the same
        two stations (same header, not ARP) made once, by the first of them.

        Call `port.receive_batch(frames)`, which counts the arrivals first. The frames after
        the first of a run skip classification, learning (a refresh at the same instant
        changes nothing) and lookup, and go through the output port's checks, tagging,
        shaping and queueing one by one; a run is not reused when the input port shapes or
        mirrors (both act per frame) or a promiscuous port must get a copy.
        """
        now = self._now()
        ingress = self.ingress
        to_port = self._to_port
        reuse = port.sw_shaper is None and not port.sw_mirror_rx and port.sw_rx_gate is None
        hdr = None  # the run's header: dst, src, and the tag if any
        out: Any = None
        tagged_run = False
        keep_tagged = False
        vid = pcp = 0
        dst = b""
        limit = 0
        for f in frames:
            if hdr is not None and f.startswith(hdr) and 18 <= len(f) <= limit:
                if tagged_run:
                    to_port(out, dst, f[:12] + f[16:], f if keep_tagged else None, vid, pcp,
                            now)
                else:
                    to_port(out, dst, f, None, vid, pcp, now)
                continue
            hdr = None
            out = ingress(port, f, now)
            if out is None or not reuse or self._promisc_copies() or len(f) < 18:
                continue
            if (f[12] == 0x81 and f[13] == 0x00) or (f[12] == 0x88 and f[13] == 0xA8):
                tci = (f[14] << 8) | f[15]
                vid, pcp = tci & 0x0FFF, (tci >> 13) | (8 if f[12] == 0x88 else 0)
                if vid == 0:
                    vid = port.sw_pvid
                tagged_run = True
                keep_tagged = (tci & 0x0FFF) != 0 and not tci & 0x1000
                et = f[16:18]
                hdr = f[:16]
                limit = port.sw_max_tagged
            else:
                vid, pcp = port.sw_pvid, 0
                tagged_run = keep_tagged = False
                et = f[12:14]
                hdr = f[:14]
                limit = port.sw_max_untagged
            if et == b"\x08\x06":  # ARP: learning looks at each one (GARP locks)
                hdr = None
            dst = f[0:6]

    def _promisc_copies(self) -> bool:
        return False

    def _emit(
        self, out: Port, inner: bytes, tagged: bytes | None, vid: int, pcp: int, now: int
    ) -> bytes | None:
        """Encode for `out`'s VLAN mode and send; returns the tagged form if one was built, so
        a flood builds it once."""
        if (vid == out.sw_untagged_vid and (pcp & 7 == 0 or out.sw_mode != _TRUNK)) or not (
            vid or pcp & 7
        ):
            f = inner
        else:
            if tagged is None:
                tci = (pcp << 13) | vid
                tag = _TAGS.get(tci)
                if tag is None:
                    tag = _TAGS[tci] = _tag_bytes(tci)
                tagged = inner[:12] + tag + inner[12:]
            f = tagged
        if out.tx_plain:
            # Port.transmit + FrameQueue.put, inlined: link up, no taps/shaping/mirroring.
            q = out.queue
            items = q.items
            if len(items) < q.maxlen:
                items.append(f)
                if q._waiter is not None:
                    q.wake()
                c = out.counters
                c.tx_frames += 1
                c.tx_bytes += len(f)
            else:
                out.counters.drop("queue-full")
            return tagged
        if out.sw_blocked:
            out.counters.drop(out.sw_block_reason)
            return tagged
        if out.sw_mtu_check and len(f) - (4 if f is tagged else 0) > out.sw_max_untagged:
            out.counters.drop("oversize")  # bigger than this hop's MTU
            return tagged
        gate = out.sw_tx_gate
        if gate is not None:  # a disabled VIF, traffic filtering and marking
            f = gate(out, inner, f, vid, pcp)
            if f is None:
                return tagged
        shaper = out.sw_egress_shaper
        if shaper is not None and not shaper.conform(len(f), now):
            out.counters.drop("shaped")
            return tagged
        if out.transmit(f) and out.sw_mirror_tx:
            for m in out.sw_mirror_tx:
                m.transmit(f)
        return tagged

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ports={len(self.ports)}>"


class PhysicalSwitch(Bridge):
    """The physical network: an IEEE 802.1Q learning bridge whose ports are access, trunk,
    native-tagged or native-untagged."""

    def add_port(self, port: Port | str, vlan: VlanPolicy | None = None) -> Port:
        """Add a port (or create one by name); default VLAN mode is a trunk of all VLANs."""
        p = Port(port) if isinstance(port, str) else port
        return self._attach(p, vlan if vlan is not None else VlanPolicy.trunk(), ROLE_BRIDGE)


@dataclass(frozen=True)
class PortGroup:
    """A vSphere port group: a name, a VLAN ID and the policies of the ports attached to it.

    vlan: 0 = EST (untagged on the vSwitch; the physical switch tags), 1-4094 = VST (tagged toward
    uplinks, untagged toward VMs), 4095 = VGT (the guest's tags pass through).
    mac_limit: most source MACs learned per port (0 = no limit); beyond it, frames from new
    MACs are dropped as `no-learn-space`.
    teaming: overrides the switch's NIC teaming for this group's ports (vSphere's per port
    group "override"): which uplinks are active and standby, and the load balancing; None
    inherits the switch's policy.
    """

    name: str
    vlan: int = 0
    security: SecurityPolicy = field(default_factory=SecurityPolicy)
    shaping: ShapingPolicy | None = None
    mac_limit: int = 0
    teaming: TeamingPolicy | None = None
    #: MTU of the group's ports (a XenServer network's `MTU`); None = the vNIC's and switch's
    mtu: int | None = None
    #: every port of the group blocked (vSphere `DVPortSetting.blocked` on the port group)
    blocked: bool = False
    #: shaping of frames leaving the switch to the group's VMs (vDS egress traffic shaping,
    #: `DVPortSetting.outShapingPolicy`); `shaping` is the ingress one, from the VMs
    egress_shaping: ShapingPolicy | None = None
    #: traffic filtering and marking (vDS `DvsTrafficRuleset`); None = no rules
    traffic_rules: TrafficRuleset | None = None
    #: XenServer `network.default_locking_mode` (unlocked/disabled): what VIFs whose
    #: locking_mode is network_default get
    default_locking_mode: LockingMode = LockingMode.UNLOCKED

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"port group name {self.name!r} must be a non-empty string")
        check_vlan(self.vlan, f"port group {self.name!r}: vlan", allow_vgt=True)
        if not isinstance(self.security, SecurityPolicy):
            raise ConfigError(f"port group {self.name!r}: security must be a SecurityPolicy")
        if self.shaping is not None and not isinstance(self.shaping, ShapingPolicy):
            raise ConfigError(f"port group {self.name!r}: shaping must be a ShapingPolicy")
        if isinstance(self.mac_limit, bool) or not isinstance(self.mac_limit, int) or (
            self.mac_limit < 0
        ):
            raise ConfigError(f"port group {self.name!r}: mac_limit {self.mac_limit!r} < 0")
        if self.teaming is not None and not isinstance(self.teaming, TeamingPolicy):
            raise ConfigError(f"port group {self.name!r}: teaming must be a TeamingPolicy")
        _check_mtu(self.mtu, f"port group {self.name!r}")
        if not isinstance(self.blocked, bool):
            raise ConfigError(f"port group {self.name!r}: blocked must be true or false")
        if self.egress_shaping is not None and not isinstance(self.egress_shaping,
                                                              ShapingPolicy):
            raise ConfigError(f"port group {self.name!r}: egress_shaping must be a "
                              "ShapingPolicy")
        if self.traffic_rules is not None and not isinstance(self.traffic_rules,
                                                             TrafficRuleset):
            raise ConfigError(f"port group {self.name!r}: traffic_rules must be a "
                              "TrafficRuleset")
        mode = locking_mode(self.default_locking_mode,
                            f"port group {self.name!r}: default_locking_mode")
        if mode not in (LockingMode.UNLOCKED, LockingMode.DISABLED):
            raise ConfigError(f"port group {self.name!r}: default_locking_mode must be "
                              f"unlocked or disabled, not {mode.value}")
        object.__setattr__(self, "default_locking_mode", mode)

    @property
    def vlan_policy(self) -> VlanPolicy:
        """The VLAN mode of this group's VM ports."""
        return port_group_vlan(self.vlan)


class StandardSwitch(Bridge):
    """A vSphere standard switch (vSS); a Xen bridge (`xenbr0`, `xapi1`) is one with a single
    port group on VLAN 0.

    `add_port_group(PortGroup(...))`, `attach(vm_port, "group")`, `add_uplink(pif)`; teaming
    across several uplinks is set with `teaming = TeamingPolicy(...)`, and a port group may
    override it (`PortGroup(..., teaming=TeamingPolicy(...))`): each VM port is pinned to an
    uplink by its own group's policy, fails over by it, and a flood arriving on an uplink
    reaches only the VM ports pinned to that uplink.
    """

    def __init__(
        self,
        name: str,
        *,
        clock: Clock | None = None,
        mac_table_size: int = DEFAULT_SIZE,
        aging_s: float = DEFAULT_AGING_S,
        teaming: TeamingPolicy | None = None,
        mtu: int | None = None,
    ) -> None:
        super().__init__(name, clock=clock, mac_table_size=mac_table_size, aging_s=aging_s,
                         mtu=mtu)
        self.port_groups: dict[str, PortGroup] = {}
        self.uplinks: list[Pif] = []
        self._teaming = teaming if teaming is not None else TeamingPolicy()
        self._team: dict[Port, Port | None] = {}
        self._vm_flood: dict[int, tuple[tuple[Port, ...], tuple[Port, ...]]] = {}
        #: (VLAN, port a flood came in on) → the VM ports it reaches (`_flood_targets`)
        self._vm_targets: dict[tuple[int, Port], tuple[Port, ...]] = {}
        self._any_promisc = False
        self._in_use: frozenset[Port] | None = None
        self._pinned: dict[int, tuple[Port, ...]] = {}
        #: hashing ports (IP hash, source MAC hash) → (index function, the uplinks up now)
        self._hashed: dict[Port, tuple[Any, tuple[Port, ...]] | None] = {}
        #: VM port → the uplink it last used: what notify-switches and failback-off compare to
        self._last_uplink: dict[Port, Port | None] = {}
        #: RARPs sent to notify the physical switches of failovers
        self.notifications = 0
        #: beacon probing's verdict (netsim.dataplane.beacon): uplinks failed beyond their link,
        #: and shotgun mode (every frame from a VM leaves by every team uplink that is up)
        self._beacon_failed: frozenset[Port] = frozenset()
        self.shotgun = False
        #: VM port → the uplink load-based teaming moved it to (netsim.dataplane.lbt)
        self._lbt_pin: dict[Port, Port] = {}
        #: who gets the 0x8922 frames (beacons, health-check probes) arriving on uplinks
        self.control_listeners: list[Any] = []
        #: 0x8922 frames taken off uplinks (never flooded to VMs)
        self.control_frames = 0
        #: the team's periodic tasks when running in a lab (netsim.lab.teammon)
        self.beacon_probe: Any = None
        self.lbt: Any = None
        self._uplink_rules: TrafficRuleset | None = None

    # -- configuration -----------------------------------------------------------------------
    def add_port_group(self, group: PortGroup) -> PortGroup:
        """Add a port group; its name must be new on this switch."""
        if not isinstance(group, PortGroup):
            raise ConfigError(f"{self.name}: add_port_group wants a PortGroup, not {group!r}")
        if group.name in self.port_groups:
            raise ConfigError(f"{self.name}: port group {group.name!r} already exists")
        if group.teaming is not None:
            self._check_team(group.teaming, f"port group {group.name!r} teaming")
        self.port_groups[group.name] = group
        self._changed()
        return group

    def attach(self, port: VmPort, port_group: PortGroup | str) -> VmPort:
        """Plug a VM's port (`VmPort`, `Vif`) into a port group of this switch."""
        if not isinstance(port, VmPort):
            raise ConfigError(
                f"{self.name}: attach wants a VM port (VmPort/Vif), not {port!r}; "
                "uplinks go through add_uplink"
            )
        name = port_group if isinstance(port_group, str) else port_group.name
        group = self.port_groups.get(name)
        if group is None or (not isinstance(port_group, str) and group is not port_group):
            known = ", ".join(sorted(self.port_groups)) or "none"
            raise ConfigError(f"{self.name}: unknown port group {name!r} (known: {known})")
        self._attach(port, group.vlan_policy, ROLE_VM)
        self._apply_group(port, group)
        return port

    def _apply_group(self, port: VmPort, group: PortGroup) -> None:
        port.sw_group = group
        sec = group.security
        port.sw_forged_ok = sec.forged_transmits
        port.sw_promisc = sec.promiscuous
        port.sw_mac_changes_ok = sec.mac_changes
        port.sw_mac_limit = group.mac_limit
        port.sw_shaper = Shaper(group.shaping, self._now()) if group.shaping else None
        port.sw_egress_shaper = (Shaper(group.egress_shaping, self._now())
                                 if group.egress_shaping else None)
        port.sw_blocked = group.blocked
        self._set_gates(port)
        port.refresh()
        self._rx_checks(port)
        self._mtu_changed()
        self._changed()

    def _set_gates(self, port: VmPort) -> None:
        locking, qos = getattr(port, "sw_vif_policy", None) or (None, None)
        group = port.sw_group
        port.sw_rx_gate, port.sw_tx_gate = build_gates(
            mac=port.vnic.mac, rules=group.traffic_rules, locking=locking,
            network_default=group.default_locking_mode, qos=qos, now_ns=self._now())

    def set_vif_policy(self, port: VmPort | str, *, locking: VifLocking | None = None,
                       qos: VifQos | None = None) -> None:
        """Set a VIF's XenServer locking (`locking_mode`, `ipv4_allowed`, `ipv6_allowed`) and
        QoS (`ratelimit`, kbps); None = unset (network default locking, no rate limit)."""
        p = self._port(port)
        if p.sw_role != ROLE_VM:
            raise ConfigError(f"{self.name}: {p.name} is not a VIF; locking and QoS are "
                              "set on VIFs")
        if locking is not None and not isinstance(locking, VifLocking):
            raise ConfigError(f"{self.name}/{p.name}: locking must be a VifLocking")
        if qos is not None and not isinstance(qos, VifQos):
            raise ConfigError(f"{self.name}/{p.name}: qos must be a VifQos")
        p.sw_vif_policy = (locking, qos)  # type: ignore[attr-defined]
        self._set_gates(p)  # type: ignore[arg-type]
        self._rx_checks(p)
        p.refresh()

    def rule_counters(self) -> dict[str, dict[str, dict[int, int]]]:
        """Matches per traffic rule (by sequence number), per VM port and direction (`in` =
        from the VM, `out` = to the VM); ports without rules are left out."""
        out: dict[str, dict[str, dict[int, int]]] = {}
        for name, p in self.ports.items():
            for way, gate in (("in", p.sw_rx_gate), ("out", p.sw_tx_gate)):
                rules = getattr(gate, "rules", None)
                if rules is not None:
                    out.setdefault(name, {})[way] = rules.counters()
        return out

    def update_port_group(self, group: PortGroup) -> None:
        """Replace a port group's policies; its ports pick them up at once."""
        if group.name not in self.port_groups:
            raise ConfigError(f"{self.name}: unknown port group {group.name!r}")
        if group.teaming is not None:
            self._check_team(group.teaming, f"port group {group.name!r} teaming")
        self.port_groups[group.name] = group
        self._changed()
        for p in self.ports.values():
            if p.sw_role == ROLE_VM and p.sw_group.name == group.name:
                self._set_vlan(p, group.vlan_policy)
                self.mac_table.flush(p)
                self._apply_group(p, group)

    def remove_port_group(self, name: str) -> None:
        """Remove a port group that has no ports left."""
        if name not in self.port_groups:
            raise ConfigError(f"{self.name}: unknown port group {name!r}")
        users = [p.name for p in self.ports.values()
                 if p.sw_role == ROLE_VM and p.sw_group.name == name]
        if users:
            raise ConfigError(
                f"{self.name}: port group {name!r} still has ports {', '.join(sorted(users))}"
            )
        del self.port_groups[name]
        self._changed()

    def add_uplink(self, pif: Pif, *, vlan: VlanPolicy | None = None) -> Pif:
        """Add a physical NIC (or VLAN PIF) as an uplink; a trunk of all VLANs by default
        (VST port groups leave tagged, VLAN 0 leaves untagged)."""
        if not isinstance(pif, Pif):
            raise ConfigError(f"{self.name}: an uplink must be a Pif (eth0, eth0.5), not {pif!r}")
        self._attach(pif, vlan if vlan is not None else VlanPolicy.trunk(), ROLE_UPLINK)
        pif.sw_check_reflect = True
        self.uplinks.append(pif)
        self._set_uplink_gates(pif)
        return pif

    @property
    def uplink_rules(self) -> TrafficRuleset | None:
        """Traffic filtering and marking of the uplink port group (vSphere lets a
        `DvsTrafficRuleset` sit on the vDS's uplink port group, `dvs-DVUplinks-N`): the rules
        meet every frame entering the switch from an uplink (`incomingPackets`) and leaving by
        one (`outgoingPackets`); a MAC qualifier's `vlan` is the VLAN on the wire (VST), which
        a VM port's rules cannot see. None = no rules."""
        return self._uplink_rules

    @uplink_rules.setter
    def uplink_rules(self, rules: TrafficRuleset | None) -> None:
        if rules is not None and not isinstance(rules, TrafficRuleset):
            raise ConfigError(f"{self.name}: uplink_rules must be a TrafficRuleset or None")
        self._uplink_rules = rules
        for p in self.uplinks:
            self._set_uplink_gates(p)

    def _set_uplink_gates(self, pif: Port) -> None:
        rules = self._uplink_rules
        pif.sw_rx_gate, pif.sw_tx_gate = build_gates(
            mac=b"", rules=rules, locking=None, network_default=LockingMode.UNLOCKED, qos=None,
            now_ns=0) if rules is not None else (None, None)
        self._rx_checks(pif)
        pif.refresh()

    @property
    def teaming(self) -> TeamingPolicy:
        """The NIC teaming policy of the uplinks."""
        return self._teaming

    @teaming.setter
    def teaming(self, policy: TeamingPolicy) -> None:
        if not isinstance(policy, TeamingPolicy):
            raise ConfigError(f"{self.name}: teaming must be a TeamingPolicy, not {policy!r}")
        self._teaming = policy
        self._check_team()
        self._changed()

    def set_teaming(self, policy: TeamingPolicy) -> int:
        """Change the teaming at run time (load balancing, failover order): ports move to the
        uplinks it picks at once and, with notify switches, each moved vNIC sends a RARP on its
        new uplink (as after a failover). Returns the RARPs sent."""
        before = {p: self.uplink_for(p) for p in self.ports.values() if p.sw_role == ROLE_VM}
        sent = self.notifications
        self.teaming = policy
        self._notify_moves(before)
        return self.notifications - sent

    def _check_team(self, policy: TeamingPolicy | None = None, what: str = "teaming") -> None:
        names = {u.name for u in self.uplinks}
        t = policy if policy is not None else self._teaming
        for n in (*t.active, *t.standby):
            if n not in names and self.uplinks:
                raise ConfigError(
                    f"{self.name}: {what} names uplink {n!r}, which is not an uplink here "
                    f"(uplinks: {', '.join(sorted(names))})"
                )

    def detach(self, port: Port | str) -> None:
        """Remove a port or uplink."""
        p = self._port(port)
        super().detach(p)
        self._lbt_pin.pop(p, None)
        if p in self.uplinks:
            self.uplinks.remove(p)  # type: ignore[arg-type]

    def _changed(self) -> None:
        self._flood.clear()
        self._vm_flood.clear()
        self._vm_targets.clear()
        self._team.clear()
        self._pinned.clear()
        self._hashed.clear()
        self._any_promisc = any(
            p.sw_promisc for p in self.ports.values() if p.sw_role == ROLE_VM
        )
        self._in_use = None

    # -- teaming -----------------------------------------------------------------------------
    def teaming_of(self, port: Port) -> TeamingPolicy:
        """The teaming policy `port`'s frames follow: its port group's override, else the
        switch's."""
        group = getattr(port, "sw_group", None) if port.sw_role == ROLE_VM else None
        if group is not None and group.teaming is not None:
            return group.teaming
        return self._teaming

    def team_order(self, policy: TeamingPolicy | None = None) -> tuple[list[Pif], list[Pif]]:
        """(active, standby) uplinks in the order of `policy` (default: the switch's),
        whatever their link state."""
        t = policy if policy is not None else self._teaming
        by_name = {u.name: u for u in self.uplinks}
        standby = [by_name[n] for n in t.standby if n in by_name]
        if t.active:
            active = [by_name[n] for n in t.active if n in by_name]
        else:
            active = [u for u in self.uplinks if u.name not in t.standby]
        return active, standby

    def _team_up(self, policy: TeamingPolicy) -> list[Pif]:
        """The uplinks `policy` spreads ports over now: its active ones that are up, else the
        first standby that is up."""
        active, standby = self.team_order(policy)
        bad = self._beacon_failed
        if bad:
            ok = [u for u in active if u.link_up and u not in bad] or \
                [u for u in standby if u.link_up and u not in bad][:1]
            if ok:
                return ok
        return [u for u in active if u.link_up] or [u for u in standby if u.link_up][:1]

    def team_members(self, port: Port) -> list[Pif]:
        """The uplinks `port`'s team spreads over now (up, not failed by beacons)."""
        return self._team_up(self.teaming_of(port))

    def pin_port(self, port: Port, uplink: Port) -> None:
        """Load-based teaming moved `port` to `uplink` (notifying the switches, if the policy
        says so)."""
        before = {port: self.uplink_for(port)}
        self._lbt_pin[port] = uplink
        self._team.pop(port, None)
        self._pinned.clear()
        self._notify_moves(before)

    # -- beacon probing hooks (netsim.dataplane.beacon) --------------------------------------
    def _control_rx(self, port: Port, inner: bytes, vid: int, now: int) -> bool:
        """An ethertype 0x8922 frame (VMware beacon) on an uplink: the switch's own business,
        handed to its listeners and never flooded to VMs."""
        self.control_frames += 1
        for listener in self.control_listeners:
            listener(port, inner, vid, now)
        return True

    def send_control(self, uplink: Port, inner: bytes, vid: int) -> None:
        """Send a switch-generated frame (beacon, health-check probe) by `uplink` in VLAN
        `vid`, tagged as the uplink's VLAN mode says."""
        self._emit(uplink, inner, None, vid, 0, self._now())

    def set_beacon_state(self, failed: frozenset[Port], shotgun: bool) -> None:
        """Beacon probing's verdict: `failed` uplinks carry nothing while others can (their
        ports fail over, notifying the switches); `shotgun` sends VM frames by every team
        uplink that is up."""
        vms = [p for p in self.ports.values() if p.sw_role == ROLE_VM]
        self._team.clear()
        before = {p: self.uplink_for(p) for p in vms}
        self._beacon_failed = frozenset(failed)
        self.shotgun = bool(shotgun)
        self._changed()
        self._notify_moves(before)

    def _shotgun_copies(self, port: Port, chosen: Port | None, inner: bytes,
                        tagged: bytes | None, vid: int, pcp: int, now: int) -> None:
        """Shotgun mode: a copy of a VM's frame by every other team uplink that is up."""
        for u in self._team_up(self.teaming_of(port)):
            if u is not chosen and (u.sw_carry is None or vid in u.sw_carry):
                self._emit(u, inner, tagged, vid, pcp, now)

    def uplink_for(self, port: Port) -> Port | None:
        """The uplink frames from `port` leave by, or None if no uplink is up."""
        try:
            return self._team[port]
        except KeyError:
            pass
        policy = self.teaming_of(port)
        up = self._team_up(policy)
        lb = policy.load_balancing
        last = self._last_uplink.get(port)
        if not up:
            choice = None
        elif not policy.failback and last is not None and last.link_up and (
                last in up or any(last in side for side in self.team_order(policy))):
            choice = last  # rollingOrder: stay where the last failover put us
        elif lb is LoadBalancing.PORT_ID:
            choice = up[port.sw_id % len(up)]
        elif lb is LoadBalancing.LOAD_BASED:  # placed as port id until LBT moves it
            pin = self._lbt_pin.get(port)
            choice = pin if pin in up else up[port.sw_id % len(up)]
        elif lb is LoadBalancing.SRC_MAC and port.sw_role == ROLE_VM:
            choice = up[port.vnic.mac[5] % len(up)]  # the vNIC's own frames
        else:
            choice = up[0]
        if lb is not LoadBalancing.IP_HASH and lb is not LoadBalancing.SRC_MAC:
            self._team[port] = choice  # hashing ports choose per frame (_uplink_frame)
        if port.sw_role == ROLE_VM:
            self._last_uplink[port] = choice
        return choice

    def _hash_team(self, port: Port) -> tuple[Any, tuple[Port, ...]] | None:
        """(index function, uplinks up) for a port whose policy hashes each frame, else
        None."""
        try:
            return self._hashed[port]
        except KeyError:
            pass
        policy = self.teaming_of(port)
        lb = policy.load_balancing
        h = None
        if lb is LoadBalancing.IP_HASH or lb is LoadBalancing.SRC_MAC:
            up = tuple(self._team_up(policy))
            if up:
                h = (ip_hash_index if lb is LoadBalancing.IP_HASH else src_mac_index, up)
        self._hashed[port] = h
        return h

    def _uplink_frame(self, port: Port, inner: bytes) -> Port | None:
        """The uplink this frame from VM port `port` leaves by: per frame for the hashing
        policies, else the port's pinned uplink."""
        h = self._hashed.get(port, _UNSET)
        if h is _UNSET:
            h = self._hash_team(port)
        if h is None:
            return self.uplink_for(port)
        up = h[1]
        return up[h[0](inner, len(up))]

    def _takes_flood_from(self, port: Port, uplink: Port) -> bool:
        """True if a flood arriving on `uplink` is for VM port `port`: the uplink it is pinned
        to, or for a hashing team (behind a LAG) any member that is up."""
        if self.uplink_for(port) is uplink or (self.shotgun and uplink in self.uplinks):
            return True
        h = self._hash_team(port)
        return h is not None and uplink in h[1]

    def _link_changed(self, port: Port) -> None:
        vms = [p for p in self.ports.values() if p.sw_role == ROLE_VM]
        before: dict[Port, Port | None] = {}
        if port in self.uplinks and vms:
            # every vNIC's uplink as it was: the link state before this change (the listener
            # runs after it), so ports that never sent anything are known too
            port.link_up = not port.link_up
            self._team.clear()
            before = {p: self.uplink_for(p) for p in vms}
            port.link_up = not port.link_up
        super()._link_changed(port)
        if before:
            self._notify_moves(before)

    def _notify_moves(self, before: dict[Port, Port | None]) -> None:
        """notifySwitches: each VM port whose uplink changed sends a RARP on its new one."""
        now = self._now()
        for p, old in before.items():
            new = self.uplink_for(p)
            if old is None or new is None or new is old or \
                    not self.teaming_of(p).notify_switches:
                continue
            vid = p.sw_pvid
            if new.sw_carry is None or vid in new.sw_carry:
                self._emit(new, rarp_announce(p.vnic.mac), None, vid, 0, now)
                self.notifications += 1

    def uplinks_pinned(self, vid: int) -> tuple[Port, ...]:
        """The uplinks that VM ports carrying VLAN `vid` are pinned to now, in uplink order:
        where a flood of `vid` from the physical network has someone to reach."""
        pinned = self._pinned.get(vid)
        if pinned is None:
            used = {self.uplink_for(p) for p in self.ports.values()
                    if p.sw_role == ROLE_VM and self.receives(p, vid)}
            pinned = self._pinned[vid] = tuple(u for u in self.uplinks if u in used)
        return pinned

    def uplinks_in_use(self) -> frozenset[Port]:
        """The uplinks carrying traffic now, under the switch's policy and every port group's
        override: per policy, the active ones that are up, else the first standby that is up
        (only the first of them under explicit failover)."""
        in_use = self._in_use
        if in_use is None:
            policies = {self._teaming}
            policies.update(g.teaming for g in self.port_groups.values() if g.teaming)
            chosen: set[Port] = set()
            for policy in policies:
                up = self._team_up(policy)
                if policy.load_balancing is LoadBalancing.EXPLICIT_FAILOVER:
                    up = up[:1]
                chosen.update(up)
                if self.shotgun:
                    chosen.update(u for side in self.team_order(policy) for u in side
                                  if u.link_up)
            in_use = self._in_use = frozenset(chosen)
        return in_use

    # -- the pipeline ------------------------------------------------------------------------
    def _reflected(self, vid: int, src: bytes, now: int) -> bool:
        # A frame from the physical network carrying a local vNIC's source MAC is our own frame
        # coming back (two uplinks on one physical network): drop it, as ESXi does.
        known = self.mac_table.lookup(self.learning_vlan(vid), src, now)
        return known is not None and known.sw_role == ROLE_VM

    def _vm_members(self, vid: int) -> tuple[tuple[Port, ...], tuple[Port, ...]]:
        vms = tuple(
            p for p in self.ports.values() if p.sw_role == ROLE_VM and self.receives(p, vid)
        )
        entry = (vms, tuple(p for p in vms if p.sw_promisc))
        self._vm_flood[vid] = entry
        return entry

    def _flood_targets(self, vid: int, port: Port) -> tuple[Port, ...]:
        """The VM ports a flood of `vid` that came in on `port` reaches: every other VM port
        of the VLAN from a VM; from an uplink, those pinned to it (`_takes_flood_from`). Kept
        until the switch changes (the teaming choices it rests on are kept as long)."""
        fl = self._vm_flood.get(vid)
        if fl is None:
            fl = self._vm_members(vid)
        if port.sw_role == ROLE_VM:
            targets = tuple(p for p in fl[0] if p is not port)
        else:
            targets = tuple(p for p in fl[0] if self._takes_flood_from(p, port))
        self._vm_targets[(vid, port)] = targets
        return targets

    def _forward(
        self, port: Port, inner: bytes, tagged: bytes | None, vid: int, pcp: int, now: int
    ) -> Port | None:
        from_vm = port.sw_role == ROLE_VM
        if not from_vm and port not in self.uplinks_in_use():
            # Teaming, no duplicates on the way in: a standby uplink takes nothing while an
            # active one is up (the physical network may flood to both).
            port.counters.drop("uplink-not-in-use")
            return
        dst = inner[0:6]
        unicast = not inner[0] & 1
        if unicast:
            fid = self._fids.get(vid, vid) if self._fids else vid
            e = self._mac_get((fid, dst))  # MacTable.lookup, inlined for fresh entries
            if e is None:
                out = None
            elif now - e.last_ns <= self._aging_ns:
                out = e.port
            else:
                out = self.mac_table.lookup(fid, dst, now)  # removes the aged-out entry
            if out is not None:
                if out is port:
                    port.counters.drop("same-port")
                    return
                if out.sw_role == ROLE_UPLINK:
                    if not from_vm:
                        port.counters.drop("uplink-to-uplink")
                        return
                    out = self._team.get(port, _UNSET)
                    if out is _UNSET:
                        out = self._uplink_frame(port, inner)
                    if out is None:
                        port.counters.drop("link-down")
                        return
                    if self.shotgun:
                        self._shotgun_copies(port, out, inner, tagged, vid, pcp, now)
                    carry = out.sw_carry
                    if carry is not None and vid not in carry:
                        port.counters.drop("vlan-not-allowed")
                        return
                    if out.tx_plain and vid and out.sw_untagged_vid != vid:
                        # The hottest case (a VM's frame leaving tagged by its uplink): _emit's
                        # fast path, inlined.
                        if tagged is None:
                            tci = (pcp << 13) | vid
                            tag = _TAGS.get(tci)
                            if tag is None:
                                tag = _TAGS[tci] = _tag_bytes(tci)
                            tagged = inner[:12] + tag + inner[12:]
                        q = out.queue
                        items = q.items
                        if len(items) < q.maxlen:
                            items.append(tagged)
                            if q._waiter is not None:
                                q.wake()
                            c = out.counters
                            c.tx_frames += 1
                            c.tx_bytes += len(tagged)
                        else:
                            out.counters.drop("queue-full")
                    else:
                        tagged = self._emit(out, inner, tagged, vid, pcp, now)
                else:
                    tagged = self._to_port(out, dst, inner, tagged, vid, pcp, now)
                if self._any_promisc:
                    fl = self._vm_flood.get(vid) or self._vm_members(vid)
                    for p in fl[1]:
                        if p is not port and p is not out:
                            tagged = self._to_port(p, None, inner, tagged, vid, pcp, now)
                return out
        if not unicast and inner[:6] == _SLOW_PROTOCOLS:
            port.counters.drop("slow-protocols")  # LACP/OAM are link-local (802.3 57A)
            return None
        # A flood that came in on an uplink reaches only the VM ports pinned to that uplink,
        # so each VM gets one copy however many active uplinks the flood arrives on.
        targets = self._vm_targets.get((vid, port))
        if targets is None:
            targets = self._flood_targets(vid, port)
        sent = bool(targets)
        if unicast:
            for p in targets:
                tagged = self._to_port(p, dst, inner, tagged, vid, pcp, now)
        else:
            # A broadcast or multicast: each VM port that nothing observes and that takes the
            # frame as it is (untagged, no private VLAN, MAC unchanged or changes accepted)
            # gets it queued here — _to_port and _emit's fast path, inlined: this loop runs
            # once per VM per ARP request.
            n = len(inner)
            untag_any = not (vid or pcp & 7)
            # Someone's ARP request (untagged toward the guest): for a guest that reads its
            # port and has nothing queued ahead of this frame, the guest's answer is decided
            # here, as Guest.receive would: not for it and the sender unknown, it counts the
            # frame; the sender known at the same MAC, nothing changes (Linux arp_process
            # refreshes an existing neighbour entry: here, the same entry). Anything else —
            # a request for it, a new MAC for a known sender, frames queued ahead — is queued.
            if n >= 42 and inner[12:22] == _ARP_REQUEST_HDR:
                spa, sha, tpa = inner[28:32], inner[22:28], inner[38:42]
            else:
                tpa = None
            for p in targets:
                if (p.tx_plain and p.sw_pvlan_rx is None and (
                        untag_any or (vid == p.sw_untagged_vid
                                      and (pcp & 7 == 0 or p.sw_mode != _TRUNK)))
                        and (p.sw_mac_changes_ok or p.vnic.effective_mac == p.vnic.mac)):
                    q = p.queue
                    items = q.items
                    g = p.rx_guest
                    if (tpa is not None and g is not None and not items and not g.reading
                            and tpa != p.rx_ip):
                        known = g.arp.get(spa)
                        if known is None:
                            g._arp_not_for_me += 1
                        if known is None or (known == sha
                                             and (p.rx_if, spa) not in g._pending):
                            c = p.counters
                            c.tx_frames += 1
                            c.tx_bytes += n
                            continue
                    if len(items) < q.maxlen:
                        items.append(inner)
                        if q._waiter is not None:
                            q.wake()
                        c = p.counters
                        c.tx_frames += 1
                        c.tx_bytes += n
                    else:
                        p.counters.drop("queue-full")
                else:
                    tagged = self._to_port(p, None, inner, tagged, vid, pcp, now)
        reason = "no-destination"
        if from_vm and self.uplinks:
            up = self._uplink_frame(port, inner)
            if up is None:
                reason = "link-down"  # every uplink is down
            elif up.sw_carry is None or vid in up.sw_carry:
                self._emit(up, inner, tagged, vid, pcp, now)
                sent = True
            if up is not None and self.shotgun:
                self._shotgun_copies(port, up, inner, tagged, vid, pcp, now)
        if not sent:
            port.counters.drop(reason)
        return None

    def _promisc_copies(self) -> bool:
        return self._any_promisc

    def _to_port(
        self,
        out: Port,
        dst: bytes | None,
        inner: bytes,
        tagged: bytes | None,
        vid: int,
        pcp: int,
        now: int,
    ) -> bytes | None:
        if out.sw_role == ROLE_VM:
            vnic = out.vnic
            if not out.sw_mac_changes_ok and vnic.effective_mac != vnic.mac:
                out.counters.drop("mac-changed")
                return tagged
            if dst is not None and not out.sw_promisc and dst != vnic.effective_mac:
                out.counters.drop("not-promiscuous")
                return tagged
            rx = out.sw_pvlan_rx
            if rx is not None:  # a private VLAN port: the reach rules, then untagged
                if vid not in rx:
                    out.counters.drop("pvlan")
                    return tagged
                self._emit(out, inner, None, out.sw_pvid, pcp, now)
                return tagged
        return self._emit(out, inner, tagged, vid, pcp, now)
