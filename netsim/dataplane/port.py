"""Ports: where frames enter and leave a switch, with bounded queues and per-reason counters.

A `Port` belongs to at most one switch. Frames arriving from outside (a guest's `VNic.send`, the
far end of a link) go through `Port.receive` into the switch's pipeline; frames the switch sends
out go through `Port.transmit` into the port's bounded queue, which whoever sits on the other
side drains: the guest (`VNic.recv`) or a link task that hands them to the peer port.

Kinds of port, named as the hypervisors name them:
- `VmPort`: a VM's vNIC attachment on a vSphere switch; `Vif`: the same on a Xen bridge, named
  `vif<domid>.<devid>`. Both carry a `VNic`, the guest side.
- `Pif`: a physical NIC, the uplink (`eth0`). `pif.vlan(5)` gives the VLAN PIF `eth0.5`, which
  tags on the way out through its parent and receives its parent's frames of that VLAN untagged.

Nothing here raises for a bad frame: it is dropped and counted under one of `DROP_REASONS`.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from netsim.dataplane.policy import check_vlan
from netsim.errors import ConfigError
from netsim.wire.frame import TPID_8021Q, mac_to_bytes, mac_to_str


class PortSwitch(Protocol):
    """What a port needs of the switch it is attached to: somewhere to hand arriving frames.

    Defined here, beside Port, so that ports do not import the switches that hold them
    (`netsim.dataplane.switch` implements it)."""

    def ingress(self, port: Port, frame: bytes) -> object:
        """Switch one frame that arrived on `port`."""

    def ingress_batch(self, port: Port, frames: Sequence[bytes]) -> None:
        """Switch several frames that arrived on `port`, in order."""

DROP_REASONS = (
    "runt",  # shorter than an Ethernet header
    "oversize",  # longer than MTU + header (+4 per tag)
    "malformed",  # cut inside a VLAN tag, or a multicast source MAC
    "vlan-not-allowed",  # a VLAN the port does not carry
    "tagged-on-access",  # a tagged frame (nonzero VID) arriving on an access port
    "forged-source",  # forged transmits Reject: source MAC is not the vNIC's
    "mac-changed",  # MAC address changes Reject: guest changed its MAC, inbound is dropped
    "not-promiscuous",  # promiscuous Reject: unicast for another MAC is not delivered
    "no-learn-space",  # the port's MAC limit refused a new source address
    "queue-full",  # the port's queue was full (nobody drained it fast enough)
    "shaped",  # over the traffic shaping rate/burst
    "link-down",  # the link (or the uplink) is down, or the port is not attached
    "same-port",  # destination was learned on the port the frame came from (bridge filtering)
    "uplink-to-uplink",  # a vSwitch never forwards between its uplinks
    "no-destination",  # no other port carries the frame's VLAN
    "reflected",  # a vSwitch's own vNIC source MAC coming back in from the physical network
    "uplink-not-in-use",  # teaming: arrived on a standby uplink while an active one is up
    "impair-loss",  # lost by the link impairment (netem `loss`) of this port or its cable
    "impair-queue",  # the impairment's queue was at its `limit` (netem tail drop)
    "corrupt",  # arrived with a bit flipped by an impairment: the FCS check failed
    "pvlan",  # private VLANs: the destination port may not receive this (secondary) VLAN
    "blocked",  # the port is blocked (vSphere DVPortSetting.blocked): nothing in or out
    "filtered",  # dropped by a traffic filtering rule (vDS DvsTrafficRule, action drop)
    "vif-locked",  # Xen VIF locking_mode=locked: a source MAC/IP not allowed
    "vif-disabled",  # Xen VIF locking_mode=disabled: all traffic dropped
    "vif-qos",  # over the Xen VIF QoS rate limit (qos_algorithm_type=ratelimit)
    "lag-not-collecting",  # arrived on a LAG/bond member that is not collecting (LACP not
    # in sync, a backup member of active-backup, a flood on a balance-slb non-active member)
    "slow-protocols",  # LACP/Marker/OAM to 01:80:c2:00:00:02 on a port that is no LAG member:
    # link-local, never forwarded by a bridge (IEEE 802.3 Annex 57A)
    "mirror-destination",  # a mirror destination without normal I/O: only mirrored frames
)

#: A tap sees every frame crossing a port: (frame bytes, outbound?). Captures read their clock.
Tap = Callable[[bytes, bool], None]

#: A drop hook sees every drop counted on a port: (reason, how many, the frame if the caller
#: had it at hand, else None). Set as `port.counters.on_drop`; called only on the drop path.
DropHook = Callable[[str, int, "bytes | None"], None]

DEFAULT_QUEUE = 1024


class TapList(list):  # type: ignore[type-arg]
    """A port's taps: a list that tells its port when it changes, so the switch's fast path
    (taken only while a port has no taps) stays correct however taps are added or removed."""

    __slots__ = ("_port",)

    def __init__(self, port: Port) -> None:
        super().__init__()
        self._port = port

    def _changed(self) -> None:
        self._port.refresh()

    def append(self, tap: Tap) -> None:  # type: ignore[override]
        super().append(tap)
        self._changed()

    def extend(self, taps: Iterable[Tap]) -> None:  # type: ignore[override]
        super().extend(taps)
        self._changed()

    def insert(self, i: Any, tap: Tap) -> None:  # type: ignore[override]
        super().insert(i, tap)
        self._changed()

    def remove(self, tap: Tap) -> None:  # type: ignore[override]
        super().remove(tap)
        self._changed()

    def pop(self, i: Any = -1) -> Tap:  # type: ignore[override]
        tap = super().pop(i)
        self._changed()
        return tap

    def clear(self) -> None:
        super().clear()
        self._changed()

    def __setitem__(self, i: Any, v: Any) -> None:
        super().__setitem__(i, v)
        self._changed()

    def __delitem__(self, i: Any) -> None:
        super().__delitem__(i)
        self._changed()

    def __iadd__(self, taps: Iterable[Tap]) -> TapList:  # type: ignore[override]
        super().extend(taps)
        self._changed()
        return self


class PortCounters:
    """Frames and bytes received (into the switch) and transmitted (out of it), and drops by
    reason. Receive counts every arrival, including ones dropped afterwards."""

    __slots__ = ("drops", "on_drop", "rx_bytes", "rx_frames", "tx_bytes", "tx_frames")

    def __init__(self) -> None:
        self.rx_frames = 0
        self.rx_bytes = 0
        self.tx_frames = 0
        self.tx_bytes = 0
        self.drops: dict[str, int] = {}
        #: the one place every drop passes: `netsim.live.drops` records dropped frames here
        self.on_drop: DropHook | None = None

    def drop(self, reason: str, n: int = 1, frame: bytes | None = None) -> None:
        """Count `n` frames dropped for `reason` (one of DROP_REASONS); `frame` is the dropped
        frame when the caller has it (for `on_drop`)."""
        self.drops[reason] = self.drops.get(reason, 0) + n
        if self.on_drop is not None:
            self.on_drop(reason, n, frame)

    @property
    def dropped(self) -> int:
        """Total drops over all reasons."""
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-able snapshot."""
        return {
            "rx_frames": self.rx_frames,
            "rx_bytes": self.rx_bytes,
            "tx_frames": self.tx_frames,
            "tx_bytes": self.tx_bytes,
            "drops": dict(sorted(self.drops.items())),
        }

    def __repr__(self) -> str:
        return f"PortCounters({self.as_dict()})"


class FrameQueue:
    """A bounded FIFO of frames with one consumer that takes them in batches.

    Cheaper than `asyncio.Queue` per frame: `put` is a deque append plus, only when the consumer
    is waiting, one future wake-up; the consumer drains everything ready in one call. A full
    queue refuses the frame (`put` returns False) and the caller counts it as `queue-full`:
    tail drop, as a NIC ring does.
    """

    __slots__ = ("_waiter", "items", "maxlen")

    def __init__(self, maxlen: int = DEFAULT_QUEUE) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ConfigError(f"queue_size: {maxlen!r} must be a positive integer")
        self.maxlen = maxlen
        self.items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def put(self, frame: bytes) -> bool:
        """Append a frame; False if the queue is full."""
        items = self.items
        if len(items) >= self.maxlen:
            return False
        items.append(frame)
        if self._waiter is not None:
            self.wake()
        return True

    def wake(self) -> None:
        """Wake the waiting consumer (after frames were appended)."""
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def get_nowait(self) -> bytes | None:
        """The oldest frame, or None if empty."""
        return self.items.popleft() if self.items else None

    async def get(self) -> bytes:
        """Wait for and return the oldest frame."""
        while not self.items:
            await self._wait()
        return self.items.popleft()

    async def get_batch(self, limit: int = 0) -> list[bytes]:
        """Wait until frames are ready, then return all of them (or the first `limit`)."""
        while not self.items:
            await self._wait()
        items = self.items
        if not limit or limit >= len(items):
            batch = list(items)
            items.clear()
            return batch
        return [items.popleft() for _ in range(limit)]

    def clear(self) -> int:
        """Discard everything queued; returns how many frames."""
        n = len(self.items)
        self.items.clear()
        return n

    async def _wait(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            raise RuntimeError("FrameQueue has a single consumer; a second one is waiting")
        fut = asyncio.get_running_loop().create_future()
        self._waiter = fut
        try:
            await fut
        finally:
            if self._waiter is fut:
                self._waiter = None


class Port:
    """A switch port: name, bounded output queue, counters, link state, taps.

    The switch stores its per-port settings (VLAN mode, security, shaping) on the port when it
    attaches it; those attributes start with `sw_` and belong to the switch.
    """

    kind = "port"

    def __init__(self, name: str, *, queue_size: int = DEFAULT_QUEUE, mtu: int = 1500) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError(f"port name {name!r} must be a non-empty string")
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65_535:
            raise ConfigError(f"{name}: mtu {mtu!r} must be between 68 and 65535")
        self.name = name
        self.mtu = mtu
        self.counters = PortCounters()
        self.queue = FrameQueue(queue_size)
        self.link_up = True
        self.switch: PortSwitch | None = None
        #: taps see every frame crossing the port (`taps.append(fn)` or `add_tap(fn)`)
        self.taps: TapList = TapList(self)
        #: set by Fabric: "host/name" or "switch/name", unique in a fabric
        self.path = name
        #: the `Link` (cable) this port is plugged into, if any
        self.link: Any = None
        self._link_listeners: list[Callable[[Port], None]] = []
        #: True while nothing but the queue stands between the switch and this port's output
        #: (link up, no taps, no egress shaping or mirroring): the switch's inlined fast path.
        self.tx_plain = True
        self.sw_egress_shaper: Any = None
        self.sw_tx_gate: Any = None  # netsim.dataplane.portgate.TxGate
        self.sw_mirror_tx: tuple[Port, ...] = ()
        #: link impairment (`netsim.dataplane.impair.ImpairedPath`) of the frames this port
        #: sends (after its taps: captured when sent) and of those it receives (before its
        #: taps: captured when they arrive); set by the fabric, None = a perfect wire
        self.impair_out: Any = None
        self.impair_in: Any = None
        #: VLANs a private-VLAN host port receives (None: not one); set by the switch
        self.sw_pvlan_rx: frozenset[int] | None = None
        #: blocked (DVPortSetting.blocked): passes nothing either way; set by the switch
        self.sw_blocked = False
        #: True when frames bigger than this port's MTU may reach it (its switch has ports
        #: with a larger MTU): the switch checks each frame's size on the way out
        self.sw_mtu_check = False
        #: CDP/LLDP agent's hook (`LinkDiscovery.receive`): consumes link-discovery frames
        #: before they are switched; set by the switch (`Bridge.set_discovery`)
        self.sw_discovery: Callable[[bytes], bool] | None = None

    def add_tap(self, tap: Tap) -> None:
        """Call `tap(frame, outbound)` for every frame crossing this port."""
        self.taps.append(tap)

    def remove_tap(self, tap: Tap) -> None:
        """Stop calling `tap`."""
        if tap in self.taps:
            self.taps.remove(tap)

    def refresh(self) -> None:
        """Recompute `tx_plain` after a change of link, taps, shaping, mirroring, blocking
        or MTU checks."""
        self.tx_plain = bool(
            self.link_up and not self.taps and self.sw_egress_shaper is None
            and self.sw_tx_gate is None
            and not self.sw_mirror_tx and self.impair_out is None and self.impair_in is None
            and not self.sw_blocked and not self.sw_mtu_check
        )

    # -- frames in and out -------------------------------------------------------------------
    def receive(self, frame: bytes) -> None:
        """A frame arrives at this port from outside (guest or wire) and enters the switch."""
        if self.tx_plain:  # link up, no taps, no impairment
            sw = self.switch
            if sw is not None:
                c = self.counters
                c.rx_frames += 1
                c.rx_bytes += len(frame)
                sw.ingress(self, frame)
                return
        imp = self.impair_in
        if imp is not None:
            imp.offer(frame)  # arrives (and is counted) when the impairment releases it
            return
        self.arrive(frame)

    def arrive(self, frame: bytes) -> None:
        """The frame reaches the port now (past any impairment): count, tap, switch."""
        c = self.counters
        c.rx_frames += 1
        c.rx_bytes += len(frame)
        if self.taps:
            for tap in self.taps:
                tap(frame, False)
        sw = self.switch
        if sw is None or not self.link_up:
            c.drop("link-down", 1, frame)
            return
        sw.ingress(self, frame)

    def arrive_batch(self, frames: Sequence[bytes]) -> None:
        """Several frames reach the port now, past its ingress impairment."""
        for f in frames:
            self.arrive(f)

    def arrive_corrupt(self, frame: bytes) -> None:
        """A frame whose FCS check fails arrives: counted and dropped, as a NIC does."""
        c = self.counters
        c.rx_frames += 1
        c.rx_bytes += len(frame)
        c.drop("corrupt")

    def receive_batch(self, frames: Sequence[bytes]) -> None:
        """Several frames arrive, in order: the same as `receive` for each, switched in one
        pipeline call (`ingress_batch`) when the port is up, untapped and attached."""
        sw = self.switch
        if not self.tx_plain or sw is None or len(frames) < 2:  # taps, link down, detached
            imp = self.impair_in
            if imp is not None:
                imp.offer_batch(frames)
                return
            for f in frames:
                self.receive(f)
            return
        c = self.counters
        c.rx_frames += len(frames)
        c.rx_bytes += sum(map(len, frames))
        sw.ingress_batch(self, frames)

    def transmit(self, frame: bytes) -> bool:
        """The switch sends a frame out of this port. False (and counted) if it was dropped."""
        c = self.counters
        if not self.link_up:
            c.drop("link-down", 1, frame)
            return False
        if self.taps:
            for tap in self.taps:
                tap(frame, True)
        imp = self.impair_out
        if imp is not None:  # on the wire now; the far end gets it when the impairment says
            c.tx_frames += 1
            c.tx_bytes += len(frame)
            imp.offer(frame)
            return True
        if not self.queue.put(frame):
            c.drop("queue-full", 1, frame)
            return False
        c.tx_frames += 1
        c.tx_bytes += len(frame)
        return True

    def emit_batch(self, frames: Sequence[bytes]) -> None:
        """Frames released by this port's egress impairment enter its output queue."""
        q = self.queue
        items = q.items
        room = q.maxlen - len(items)
        if room >= len(frames):
            items.extend(frames)
        else:
            items.extend(frames[:max(room, 0)])
            self.counters.drop("queue-full", len(frames) - max(room, 0))
        if items and q._waiter is not None:
            q.wake()

    # -- link state --------------------------------------------------------------------------
    def set_link(self, up: bool) -> None:
        """Bring the link up or down. Down: frames are dropped as `link-down` and what was queued
        is discarded (counted); switches re-pick their uplinks."""
        up = bool(up)
        if up == self.link_up:
            return
        self.link_up = up
        self.refresh()
        if not up:
            c = self.counters
            if c.on_drop is not None:  # someone records dropped frames: one by one
                for f in self.queue.items:
                    c.drop("link-down", 1, f)
                self.queue.clear()
            else:
                lost = self.queue.clear()
                if lost:
                    c.drop("link-down", lost)
        for fn in list(self._link_listeners):
            fn(self)

    def on_link_change(self, fn: Callable[[Port], None]) -> None:
        """Call `fn(port)` whenever this port's link goes up or down."""
        self._link_listeners.append(fn)

    def off_link_change(self, fn: Callable[[Port], None]) -> None:
        """Stop calling `fn` on link changes."""
        self._link_listeners = [f for f in self._link_listeners if f != fn]

    def __repr__(self) -> str:
        state = "up" if self.link_up else "down"
        return f"<{type(self).__name__} {self.path} {state}>"


class VNic:
    """The guest's side of a VM port: what the VM sends and receives.

    `mac` is the configured MAC (from the VM's config); `effective_mac` is what the guest OS uses,
    which it may change (`set_effective_mac`) — the security policy decides what follows.
    """

    __slots__ = ("_port", "effective_mac", "mac", "send")

    def __init__(self, port: VmPort, mac: bytes) -> None:
        self._port = port
        self.mac = mac
        self.effective_mac = mac
        #: send(frame): transmit one frame from the guest (drops are counted on the port).
        #: Bound straight to the port's receive: one call less per frame on the hot path.
        self.send: Callable[[bytes], None] = port.receive

    @property
    def port(self) -> VmPort:
        """The switch port this vNIC is plugged into."""
        return self._port

    @property
    def name(self) -> str:
        """The port's name (`vif1.0`, `vm1.eth0`)."""
        return self._port.name

    def send_many(self, frames: Iterable[bytes]) -> None:
        """Transmit several frames from the guest, in order, switched as one batch."""
        self._port.receive_batch(frames if isinstance(frames, (list, tuple)) else list(frames))

    async def recv(self) -> bytes:
        """Wait for the next frame delivered to the guest."""
        return await self._port.queue.get()

    async def recv_batch(self, limit: int = 0) -> list[bytes]:
        """Wait for frames, then return every frame ready (at most `limit` if given)."""
        return await self._port.queue.get_batch(limit)

    def recv_nowait(self) -> bytes | None:
        """The next delivered frame, or None if none is waiting."""
        return self._port.queue.get_nowait()

    def drain(self) -> list[bytes]:
        """Every frame waiting for the guest, without waiting."""
        q = self._port.queue
        out = []
        while (f := q.get_nowait()) is not None:
            out.append(f)
        return out

    def set_effective_mac(self, mac: str | bytes) -> None:
        """The guest changes its MAC address (the configured one stays)."""
        self.effective_mac = mac_to_bytes(mac)

    def __repr__(self) -> str:
        return f"<VNic {self.name} {mac_to_str(self.mac)}>"


class VmPort(Port):
    """A VM's vNIC attachment point on a switch; `vnic` is the guest side."""

    kind = "vm"

    def __init__(
        self, name: str, *, mac: str | bytes, queue_size: int = DEFAULT_QUEUE, mtu: int = 1500
    ) -> None:
        super().__init__(name, queue_size=queue_size, mtu=mtu)
        m = mac_to_bytes(mac)
        if m[0] & 1:
            raise ConfigError(f"{name}: MAC {mac_to_str(m)} is a multicast address")
        self.vnic = VNic(self, m)
        #: the `Guest` reading this port's queue, and its IPv4 address on this vNIC, when it
        #: reads it untagged (`set_reader`): lets a switch decide someone else's broadcast ARP
        #: request for the guest when nothing is queued ahead of it (see `Bridge._forward`)
        self.rx_guest: Any = None
        self.rx_ip: bytes | None = None
        self.rx_if = 0

    def set_reader(self, guest: Any, ifindex: int = 0) -> None:
        """`guest` (a `netsim.dataplane.guest.Guest`) reads this port's frames on its
        interface `ifindex`; None: nobody does (the frames just queue)."""
        st = guest.iface_state(ifindex) if guest is not None else None
        if st is None or st.vlan is not None or st.ip is None or len(guest.ifaces) != 1:
            # VGT guests, guests without an address, and guests with several vNICs (one ARP
            # cache, several queues read in turn: what is "ahead" spans queues): frame by frame
            self.rx_guest = None
            return
        self.rx_guest, self.rx_ip, self.rx_if = guest, st.ip, ifindex

    @property
    def mac(self) -> bytes:
        """The configured MAC of the vNIC."""
        return self.vnic.mac


class Vif(VmPort):
    """A Xen VIF backend, named `vif<domid>.<devid>` as in dom0. Without `mac`, the MAC is
    `00:16:3e:DD:DD:NN` from the domid and devid (Xen's prefix, next byte below 0x80)."""

    kind = "vif"

    def __init__(
        self,
        domid: int,
        devid: int,
        *,
        mac: str | bytes | None = None,
        queue_size: int = DEFAULT_QUEUE,
        mtu: int = 1500,
    ) -> None:
        for what, v in (("domid", domid), ("devid", devid)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"vif {what}: {v!r} must be a non-negative integer")
        self.domid = domid
        self.devid = devid
        if mac is None:
            mac = f"00:16:3e:{(domid >> 8) & 0x7F:02x}:{domid & 0xFF:02x}:{devid & 0xFF:02x}"
        super().__init__(f"vif{domid}.{devid}", mac=mac, queue_size=queue_size, mtu=mtu)


class Pif(Port):
    """A physical NIC (`eth0`): a switch's uplink, linked to a port of the physical network.

    `vlan(vid)` returns its VLAN PIF `eth0.<vid>` (created once). Frames arriving on the wire with
    a tag for a VLAN PIF go to that PIF untagged; untagged frames go to this PIF's own switch;
    anything else is dropped as `vlan-not-allowed`.
    """

    kind = "pif"

    def __init__(self, name: str, *, queue_size: int = DEFAULT_QUEUE, mtu: int = 1500) -> None:
        super().__init__(name, queue_size=queue_size, mtu=mtu)
        self.vlan_pifs: dict[int, VlanPif] = {}

    def vlan(self, vid: int) -> VlanPif:
        """The VLAN PIF `<name>.<vid>` on this NIC."""
        check_vlan(vid, f"{self.name}: VLAN PIF", allow_vgt=False)
        if vid == 0:
            raise ConfigError(f"{self.name}: VLAN PIF needs a VLAN ID 1-4094, not 0")
        pif = self.vlan_pifs.get(vid)
        if pif is None:
            pif = self.vlan_pifs[vid] = VlanPif(self, vid)
        return pif

    def receive_batch(self, frames: Sequence[bytes]) -> None:
        """Several frames from the wire: as one batch unless VLAN PIFs must demultiplex."""
        if self.impair_in is not None:
            self.impair_in.offer_batch(frames)
        elif self.vlan_pifs:
            for f in frames:
                self.receive(f)
        else:
            Port.receive_batch(self, frames)

    def receive(self, frame: bytes) -> None:
        """Demultiplex VLAN PIFs, then hand the rest to this PIF's switch."""
        if not self.vlan_pifs:
            Port.receive(self, frame)
            return
        if self.impair_in is not None:
            self.impair_in.offer(frame)
            return
        self.arrive(frame)

    def arrive(self, frame: bytes) -> None:
        """Past the ingress impairment: demultiplex VLAN PIFs, then this PIF's switch."""
        if not self.vlan_pifs:
            Port.arrive(self, frame)
            return
        c = self.counters
        c.rx_frames += 1
        c.rx_bytes += len(frame)
        if self.taps:
            for tap in self.taps:
                tap(frame, False)
        if not self.link_up:
            c.drop("link-down", 1, frame)
            return
        if len(frame) >= 18 and frame[12] == 0x81 and frame[13] == 0x00:
            vid = ((frame[14] << 8) | frame[15]) & 0x0FFF
            child = self.vlan_pifs.get(vid)
            if child is not None:
                child.receive(frame[:12] + frame[16:])
                return
            if vid != 0:  # VID 0 is a priority tag: the frame is really untagged
                c.drop("vlan-not-allowed", 1, frame)
                return
        if self.switch is None:
            c.drop("vlan-not-allowed", 1, frame)
            return
        self.switch.ingress(self, frame)

    def set_link(self, up: bool) -> None:
        """Link state of the NIC; its VLAN PIFs follow it."""
        super().set_link(up)
        for child in self.vlan_pifs.values():
            child.set_link(up)


class VlanPif(Pif):
    """`eth0.5`: a VLAN sub-interface of a PIF. Sends through its parent with the tag added;
    receives its parent's frames of this VLAN with the tag removed. Has no queue of its own."""

    kind = "vlan-pif"

    def __init__(self, parent: Pif, vid: int) -> None:
        super().__init__(f"{parent.name}.{vid}", mtu=parent.mtu)
        self.parent = parent
        self.vid = vid
        self._tag = bytes((TPID_8021Q >> 8, TPID_8021Q & 0xFF, vid >> 8, vid & 0xFF))
        self.link_up = parent.link_up
        self.refresh()

    def refresh(self) -> None:
        """A VLAN PIF always transmits through its parent, never straight into a queue."""
        self.tx_plain = False

    def vlan(self, vid: int) -> VlanPif:
        """VLAN PIFs do not nest here."""
        raise ConfigError(f"{self.name}: a VLAN PIF cannot carry VLAN PIFs (wanted .{vid})")

    def transmit(self, frame: bytes) -> bool:
        """Tag with this VLAN and send through the parent NIC."""
        c = self.counters
        if not self.link_up:
            c.drop("link-down", 1, frame)
            return False
        if self.taps:
            for tap in self.taps:
                tap(frame, True)
        ok = self.parent.transmit(frame[:12] + self._tag + frame[12:])
        if ok:
            c.tx_frames += 1
            c.tx_bytes += len(frame)
        else:
            c.drop("queue-full" if self.parent.link_up else "link-down", 1, frame)
        return ok

    def receive(self, frame: bytes) -> None:
        """A frame of this VLAN, untagged by the parent, enters this PIF's switch."""
        sw = self.switch
        if sw is not None and self.link_up and not self.taps and self.impair_in is None:
            c = self.counters  # Port.receive -> Port.arrive with nothing in the way, inlined
            c.rx_frames += 1
            c.rx_bytes += len(frame)
            sw.ingress(self, frame)
            return
        Port.receive(self, frame)
