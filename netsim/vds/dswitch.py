"""Distributed switch (vDS): one configuration, a proxy switch on every member host.

Who does what:
- `ManagementPlane` (the vCenter role) publishes each vDS's `VdsConfig` retained at QoS 1 and
  watches the versions hosts report;
- `Peers` follows every host's presence (last will) and status (which VLANs it has ports in);
- `RemoteMacTable` learns (VLAN, MAC) → host from frames that arrive from other hosts;
- `ProxyLink` is a proxy switch's door to the other hosts: frames for a remote MAC go in a batch
  to that host; broadcast, multicast and unknown unicast go to the VLAN's flood topic, which only
  hosts with ports in that VLAN subscribe to (and nothing is sent when no other host has one);
  frames from other hosts are checked (VLAN present here, batch not forged) and handed in;
- `HostPlane` is a host's side of the management plane: it applies every newer config version
  through a callback, reports the version it runs, and keeps the flood subscriptions in step;
- `ProxySwitch` is the host's `StandardSwitch` for the vDS, configured from the document, whose
  uplink PIFs the `ProxyLink` carries over the bus.

Everything runs on any `Bus` (in-process or MQTT) and never imports a concrete transport.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from netsim.clock import Clock, sweep_by_deadline
from netsim.dataplane.policy import (
    FailureDetection,
    LoadBalancing,
    SecurityPolicy,
    ShapingPolicy,
    TeamingPolicy,
)
from netsim.dataplane.port import Pif, VmPort
from netsim.dataplane.switch import PortGroup, StandardSwitch
from netsim.errors import ConfigError, TransportError
from netsim.lab.fabric import Host
from netsim.lab.teammon import start_team_monitors
from netsim.vds.monitoring import ProxyMonitoring
from netsim.vds.transport.bus import (
    PRESENCE_ONLINE,
    Bus,
    BusMessage,
    DropPolicy,
    Subscription,
)
from netsim.vds.transport.dataplane import BatchReceiver, BatchSender
from netsim.vds.transport.topics import Topics
from netsim.vds.vdsconfig import DvShaping, DvTeaming, VdsConfig

NS = 1_000_000_000
VGT = 4095  # a guest-tagging port group carries every VLAN


# ------------------------------------------------------------------------- remote learning
class RemoteMacTable:
    """(VLAN, MAC) → host for MACs behind other hosts, with aging and a capacity bound.

    When full, the least recently seen entry of the host holding the most entries is evicted
    (OVS's fairness rule, per host instead of per port).
    """

    def __init__(self, clock: Clock, *, capacity: int = 8192, aging_s: float = 300.0) -> None:
        if capacity < 1:
            raise ConfigError(f"remote MAC table capacity must be ≥1, got {capacity}")
        self.clock = clock
        self.capacity = capacity
        self.aging_ns = int(aging_s * NS)
        self._by_host: dict[str, collections.OrderedDict[tuple[int, bytes], int]] = {}
        self._where: dict[tuple[int, bytes], str] = {}
        self._entry_waiter: asyncio.Future[None] | None = None
        self.evictions = 0
        self.moves = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._where)

    def learn(self, vid: int, mac: bytes, host: str) -> None:
        """Record that `mac` in `vid` was last seen behind `host` (now)."""
        key = (vid, mac)
        old = self._where.get(key)
        if old is not None and old != host:
            del self._by_host[old][key]
            self.moves += 1
        elif old is None and len(self._where) >= self.capacity:
            self._evict()
        w = self._entry_waiter
        if w is not None and not self._where:  # the aging task waits for a first entry
            self._entry_waiter = None
            if not w.done():
                w.set_result(None)
        entries = self._by_host.setdefault(host, collections.OrderedDict())
        entries[key] = self.clock.now_ns()
        entries.move_to_end(key)
        self._where[key] = host

    def _evict(self) -> None:
        host = max(self._by_host, key=lambda h: len(self._by_host[h]))
        key, _ = self._by_host[host].popitem(last=False)
        del self._where[key]
        self.evictions += 1

    def next_expiry_ns(self) -> int | None:
        """When the least recently seen entry ages out (None if the table is empty)."""
        oldest = min((next(iter(e.values())) for e in self._by_host.values() if e),
                     default=None)
        return None if oldest is None else oldest + self.aging_ns + 1

    async def wait_for_entry(self) -> None:
        """Return once the table holds an entry (at once if it does)."""
        while not self._where:
            w = self._entry_waiter
            if w is None or w.done():
                w = self._entry_waiter = asyncio.get_running_loop().create_future()
            await w

    def expire(self) -> int:
        """Drop every entry not seen for longer than the aging time; returns how many.

        Each host's entries are kept oldest first, so this costs what it removes."""
        limit = self.clock.now_ns() - self.aging_ns
        gone = 0
        for host in list(self._by_host):
            entries = self._by_host[host]
            while entries:
                key, seen = next(iter(entries.items()))
                if seen >= limit:
                    break
                del entries[key]
                del self._where[key]
                gone += 1
            if not entries:
                del self._by_host[host]
        self.expirations += gone
        return gone

    def lookup(self, vid: int, mac: bytes) -> str | None:
        """The host behind `mac` in `vid`, or None (unknown or aged out)."""
        key = (vid, mac)
        host = self._where.get(key)
        if host is None:
            return None
        if self.clock.now_ns() - self._by_host[host][key] > self.aging_ns:
            self.forget(vid, mac)
            return None
        return host

    def forget(self, vid: int, mac: bytes) -> None:
        """Drop one entry (the MAC showed up locally, e.g. after a migration)."""
        host = self._where.pop((vid, mac), None)
        if host is not None:
            del self._by_host[host][(vid, mac)]

    def forget_host(self, host: str) -> int:
        """Drop everything learned behind `host` (it went down); return how many."""
        entries = self._by_host.pop(host, None) or {}
        for key in entries:
            del self._where[key]
        return len(entries)

    def entries(self) -> list[tuple[int, str, str]]:
        """(vid, mac hex, host) of every entry, for inspection."""
        return [(v, m.hex(":"), h) for (v, m), h in sorted(self._where.items())]


# ------------------------------------------------------------------------------------ peers
@dataclass
class PeerState:
    """What one host told the fabric about itself."""

    online: bool = False
    session: int = 0
    vms: tuple[str, ...] = ()
    migration_error: str = ""
    #: the last config this host refused: (vds, version, why)
    refused: tuple[str, int, str] | None = None
    #: vds → (config version running, VLANs with local ports)
    vds: dict[str, tuple[int, frozenset[int]]] = field(default_factory=dict)


class Peers:
    """Presence and status of every host of the fabric, from their retained topics."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.hosts: dict[str, PeerState] = {}
        self.bad_status = 0
        self._online: set[str] = set()
        self._changed = asyncio.Event()
        self.on_down: list[Callable[[str], None]] = []

    def handle(self, msg: BusMessage) -> None:
        """Take a presence or status message in."""
        host = self.topics.host_of(msg.topic)
        if host is None:
            return
        st = self.hosts.setdefault(host, PeerState())
        if msg.topic.endswith("/presence"):
            was = st.online
            st.online = msg.payload == PRESENCE_ONLINE
            if st.online:
                self._online.add(host)
            else:
                self._online.discard(host)
            if was and not st.online:
                for cb in self.on_down:
                    cb(host)
        elif msg.topic.endswith("/status"):
            try:
                doc = json.loads(msg.payload)
                st.session = int(doc.get("session", 0))
                st.vms = tuple(str(v) for v in doc.get("vms", ()))
                st.migration_error = str(doc.get("migration_error", ""))
                ref = doc.get("refused")
                st.refused = (str(ref["vds"]), int(ref["version"]), str(ref["error"])) \
                    if ref else None
                st.vds = {
                    name: (int(v["version"]), frozenset(int(x) for x in v["vlans"]))
                    for name, v in doc["vds"].items()
                }
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                self.bad_status += 1
                return
        self._changed.set()

    def online(self) -> set[str]:
        """Hosts whose presence is online (kept up to date as presence arrives; do not modify)."""
        return self._online

    def flood_targets(self, vds: str, vid: int, exclude: str) -> set[str]:
        """Online hosts other than `exclude` with ports in `vid` on `vds`."""
        out = set()
        for h, s in self.hosts.items():
            if h == exclude or not s.online or vds not in s.vds:
                continue
            vlans = s.vds[vds][1]
            if vid in vlans or VGT in vlans:
                out.add(h)
        return out

    def host_of_vm(self, vm: str) -> str | None:
        """The online host that reports running `vm`, or None."""
        for h, s in self.hosts.items():
            if s.online and vm in s.vms:
                return h
        return None

    def version(self, host: str, vds: str) -> int | None:
        """The config version `host` reports for `vds`, or None."""
        st = self.hosts.get(host)
        if st is None or vds not in st.vds:
            return None
        return st.vds[vds][0]

    async def wait_until(self, pred: Callable[[], bool], *, within_s: float, what: str) -> None:
        """Return once `pred()` holds; TransportError naming `what` after `within_s` seconds."""
        async def wait() -> None:
            while not pred():
                self._changed.clear()  # no await between the check and here: no lost wakeup
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), within_s)
        except TimeoutError:
            raise TransportError(f"{what}: not within {within_s} s") from None


#: tasks of this module that ended with an exception (a bug: they handle every bad input);
#: `HostAgent` re-raises the first one when it closes, as `Fabric` does for its tasks
Failures = list[tuple[str, BaseException]]


def _start(coro: Any, name: str, failures: Failures) -> asyncio.Task[Any]:
    task = asyncio.create_task(coro, name=name)

    def done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            failures.append((t.get_name(), t.exception()))  # type: ignore[arg-type]

    task.add_done_callback(done)
    return task


async def _pump(sub: Subscription, handle: Callable[[BusMessage], None]) -> None:
    """Feed every message of `sub` to `handle` until the subscription closes."""
    async for msg in sub:
        handle(msg)


# ------------------------------------------------------------------------- management plane
class ManagementPlane:
    """The vCenter role: publishes vDS configurations and sees which hosts run which version."""

    def __init__(self, bus: Bus, topics: Topics) -> None:
        self.bus = bus
        self.topics = topics
        self.peers = Peers(topics)
        self.failures: Failures = []
        self.configs: dict[str, VdsConfig] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            for flt in (self.topics.all_presence, self.topics.all_status):
                sub = await self._stack.enter_async_context(
                    self.bus.subscribe(flt, qos=1, policy=DropPolicy.DROP_OLDEST)
                )
                task = _start(_pump(sub, self.peers.handle), f"peers {flt}", self.failures)
                self._stack.callback(task.cancel)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def publish(self, config: VdsConfig) -> VdsConfig:
        """Publish `config` (retained, QoS 1); versions must only go up."""
        old = self.configs.get(config.name)
        if old is not None and config.version <= old.version:
            raise ConfigError(
                f"{config.name}: version {config.version} not newer than {old.version}"
            )
        await self.bus.publish(
            self.topics.vds_config(config.name), config.to_json(), qos=1, retain=True
        )
        self.configs[config.name] = config
        return config

    async def wait_applied(
        self, vds: str, version: int, hosts: set[str] | None = None, *, within_s: float = 10.0
    ) -> None:
        """Return once every host in `hosts` (default: the config's members) runs ≥ `version`."""
        want = hosts if hosts is not None else set(self.configs[vds].hosts)
        # Only hosts still lagging are looked at again on each status (versions only go up):
        # at 500 hosts, re-checking all of them for each of 500 reports was 250,000 checks.
        remaining = set(want)

        def lagging() -> set[str]:
            nonlocal remaining
            remaining = {h for h in remaining if (self.peers.version(h, vds) or 0) < version}
            return remaining

        def refusals() -> list[str]:
            out = []
            for h in sorted(remaining):
                st = self.peers.hosts.get(h)
                if st is not None and st.refused and st.refused[:2] == (vds, version):
                    out.append(f"{h}: {st.refused[2]}")
            return out

        try:
            await self.peers.wait_until(
                lambda: not lagging() or bool(refusals()),
                within_s=within_s, what=f"{vds} version {version}",
            )
            if refusals():
                raise ConfigError(f"{vds} v{version} refused by " + "; ".join(refusals()))
        except TransportError:
            raise TransportError(
                f"{vds}: version {version} not applied within {within_s} s by "
                f"{', '.join(sorted(lagging()))}"
            ) from None


# ---------------------------------------------------------------------------- data plane
@dataclass(slots=True)
class LinkCounters:
    """What a ProxyLink sent and received, and every frame it refused."""

    tx_unicast: int = 0
    tx_flood: int = 0
    tx_no_remote_member: int = 0
    tx_malformed: int = 0
    rx_frames: int = 0
    rx_vlan_not_local: int = 0
    rx_vlan_mismatch: int = 0
    #: frames for a VM that migrated away, arriving before everyone relearned (switch-over)
    rx_in_flight: int = 0


def frame_vid(frame: bytes) -> int | None:
    """The VLAN a wire-form frame travels in (its outer 802.1Q/802.1ad tag's VID, 0 if
    untagged), or None for a frame too short to tell."""
    n = len(frame)
    if n < 14:
        return None
    if (frame[12] == 0x81 and frame[13] == 0x00) or (frame[12] == 0x88 and frame[13] == 0xA8):
        if n < 18:
            return None
        return ((frame[14] << 8) | frame[15]) & 0x0FFF
    return 0


class ProxyLink:
    """A proxy switch's connection to the same vDS on other hosts, through the bus.

    Frames travel in wire form (802.1Q-tagged when their VLAN is not 0), as they leave the
    proxy switch's uplink. `deliver(vid, frame)` hands a frame from another host to the local
    proxy switch — only when the frame's own tag matches the VLAN it was sent in and a local
    port carries that VLAN, so a forged batch cannot move a frame across VLANs.
    """

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        *,
        host: str,
        vds: str,
        peers: Peers,
        clock: Clock,
        deliver: Callable[[int, bytes], None],
        session: int,
        deliver_batch: Callable[[list[tuple[int, bytes]]], None] | None = None,
        mac_table_size: int = 8192,
        aging_s: float = 300.0,
        batch_frames: int = 256,
        batch_bytes: int = 64 * 1024,
        linger_s: float = 0.002,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.host = host
        self.vds = vds
        self.peers = peers
        self.deliver = deliver
        #: optional: hands all the frames of one received message in at once, in order
        self.deliver_batch = deliver_batch
        self.remote = RemoteMacTable(clock, capacity=mac_table_size, aging_s=aging_s)
        self.sender = BatchSender(bus, host, session=session, max_frames=batch_frames,
                                  max_bytes=batch_bytes, clock=clock)
        #: a partly filled batch waits at most this long while frames keep coming
        self.linger_ns = int(linger_s * NS)
        self.receiver = BatchReceiver(topics.host_of, ignore_src=host)
        self.counters = LinkCounters()
        self.failures: Failures = []
        self.clock = clock
        #: MAC → clock ns until which frames for it count as in flight (its VM migrated away)
        self.departed: dict[bytes, int] = {}
        self._uni_topics: dict[str, str] = {}
        self.vlans: frozenset[int] = frozenset()
        #: private VLAN → its primary: remote MACs are learned and looked up there (shared
        #: VLAN learning, as on the proxy switch); set from the config
        self.fids: dict[int, int] = {}
        self._flood_subs: dict[int, tuple[Subscription, asyncio.Task[None]]] = {}
        self._stack = contextlib.AsyncExitStack()
        peers.on_down.append(self._host_down)

    def _host_down(self, host: str) -> None:
        self.remote.forget_host(host)

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        sub = await self._stack.enter_async_context(
            self.bus.subscribe(self.topics.unicast_to(self.host, self.vds), maxsize=8192)
        )
        task = _start(self._receive(sub), f"{self.host} {self.vds} unicast in", self.failures)
        self._stack.callback(task.cancel)
        aging = _start(self._age(), f"{self.host} {self.vds} remote MAC aging", self.failures)
        self._stack.callback(aging.cancel)
        return self

    async def _age(self) -> None:
        """Expire the remote MAC table's entries as they age out (at most every quarter of
        the aging time, not at all while it is empty), as the fabric does for the switches'
        tables, so it holds only stations still heard from and idle time costs nothing."""
        r = self.remote
        await sweep_by_deadline(self.clock, r.next_expiry_ns, r.expire, r.wait_for_entry,
                                min_gap_s=r.aging_ns / NS / 4)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.set_vlans(frozenset())
        await self._stack.aclose()
        with contextlib.suppress(ValueError):  # the peers may be shared with other agents
            self.peers.on_down.remove(self._host_down)

    async def set_vlans(self, vlans: frozenset[int]) -> None:
        """Receive floods of exactly these VLANs (the ones with local ports)."""
        every = VGT in vlans
        wanted = {VGT} if every else set(vlans)
        for vid in list(self._flood_subs):
            if vid not in wanted:
                sub, task = self._flood_subs.pop(vid)
                task.cancel()
                await sub.close()
        for vid in wanted - set(self._flood_subs):
            flt = (
                f"{self.topics.prefix}/host/+/data/{self.vds}/flood/+"
                if vid == VGT
                else self.topics.flood_in(vid, self.vds)
            )
            sub = self.bus.subscribe(flt, maxsize=8192)
            await sub.__aenter__()
            self._flood_subs[vid] = (
                sub, _start(self._receive(sub), f"{self.host} flood {vid} in", self.failures)
            )
        self.vlans = frozenset(vlans)

    def has_vlan(self, vid: int) -> bool:
        """True when a local port carries `vid`."""
        return vid in self.vlans or VGT in self.vlans

    async def _receive(self, sub: Subscription) -> None:
        while True:
            for msg in await sub.get_batch():
                got = self.receiver.accept(msg)
                if got is None:
                    continue
                src, frames = got
                c = self.counters
                deliver = self.deliver
                batch: list[tuple[int, bytes]] = []
                keep = batch.append if self.deliver_batch is not None else None
                learned = None
                for vid, frame in frames:
                    if frame_vid(frame) != vid:
                        c.rx_vlan_mismatch += 1
                        continue
                    if self.departed and self._departed(frame[0:6]):
                        c.rx_in_flight += 1
                        continue
                    if not self.has_vlan(vid):
                        c.rx_vlan_not_local += 1
                        continue
                    key = (self.fids.get(vid, vid) if self.fids else vid, frame[6:12])
                    if key != learned and not frame[6] & 1:  # once per run of one source
                        self.remote.learn(key[0], key[1], src)
                        learned = key
                    c.rx_frames += 1
                    if keep is None:
                        deliver(vid, frame)
                    else:
                        keep((vid, frame))
                if batch:
                    self.deliver_batch(batch)  # type: ignore[misc]

    def _departed(self, dst: bytes) -> bool:
        until = self.departed.get(dst)
        if until is None:
            return False
        if until >= self.clock.now_ns():
            return True
        del self.departed[dst]
        return False

    async def send(self, frame: bytes) -> None:
        """Send a frame that leaves this host's proxy switch toward the other hosts (it goes
        out with the next `flush`, or at once when its batch is full)."""
        await self.send_many((frame,))

    def stage(self, frames: Iterable[bytes]) -> None:
        """Sort frames leaving the proxy switch into the batch of their destination host (a
        known remote MAC) or of their VLAN's flood topic, without publishing (full batches
        are sealed for `sender.publish_sealed`). Refused frames are counted."""
        c = self.counters
        online = self.peers.online()
        lookup = self.remote.lookup
        add = self.sender.add
        uni_topics = self._uni_topics
        flood_topics: dict[int, str | None] = {}  # per call: VLAN → flood topic, None = nobody
        for frame in frames:
            vid = frame_vid(frame)
            if vid is None:
                c.tx_malformed += 1
                continue
            dst = frame[0:6]
            if not dst[0] & 1:
                host = lookup(self.fids.get(vid, vid) if self.fids else vid, dst)
                if host is not None and host in online:
                    topic = uni_topics.get(host)
                    if topic is None:
                        topic = uni_topics[host] = self.topics.unicast(self.host, host, self.vds)
                    c.tx_unicast += 1
                    add(topic, vid, frame)
                    continue
            topic = flood_topics.get(vid, "")
            if topic == "":
                topic = flood_topics[vid] = (
                    self.topics.flood(self.host, vid, self.vds)
                    if self.peers.flood_targets(self.vds, vid, self.host) else None
                )
            if topic is None:
                c.tx_no_remote_member += 1
                continue
            c.tx_flood += 1
            add(topic, vid, frame)

    async def send_many(self, frames: Iterable[bytes]) -> None:
        """`stage` the frames, then publish the batches they filled."""
        self.stage(frames)
        await self.sender.publish_sealed()

    async def flush(self) -> None:
        """Publish the batches gathered since the last flush."""
        await self.sender.flush()

    def linger_over(self) -> bool:
        """True when the oldest frame waiting in a partly filled batch has waited `linger_s`."""
        since = self.sender.oldest_ns
        return since is not None and self.clock.now_ns() - since >= self.linger_ns

    def local_mac(self, vid: int, mac: bytes) -> None:
        """`mac` was learned on a local port: it is no longer behind another host."""
        self.remote.forget(self.fids.get(vid, vid), mac)


# ----------------------------------------------------------------------------- fabric view
class FabricView:
    """What the host agents of one process share: every host's presence and status, and each
    vDS's configuration, each read once on one subscription of one bus.

    Without it every agent subscribes to all of these itself, so each status report reaches
    every host (hosts² messages per push: 250,000 at 500 hosts) and each pushed config is
    decoded once per agent; with it a report reaches each process once and a config is decoded
    once per process, then handed to its agents (`HostPlane(view=...)`).
    """

    #: retained presence + status of this many hosts fit in the subscription queues
    MAX_HOSTS = 16384

    def __init__(self, bus: Bus, topics: Topics) -> None:
        self.bus = bus
        self.topics = topics
        self.peers = Peers(topics)
        self.failures: Failures = []
        self.bad_configs = 0
        self.last_error = ""
        #: the latest config per topic (or why it was refused), for agents that attach later
        self.latest: dict[str, VdsConfig | ConfigError] = {}
        self._planes: list[HostPlane] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            for flt in (self.topics.all_presence, self.topics.all_status):
                sub = await self._stack.enter_async_context(self.bus.subscribe(
                    flt, qos=1, maxsize=self.MAX_HOSTS, policy=DropPolicy.DROP_OLDEST))
                task = _start(_pump(sub, self.peers.handle), f"view {flt}", self.failures)
                self._stack.callback(task.cancel)
            cfg = await self._stack.enter_async_context(self.bus.subscribe(
                self.topics.all_vds_configs, qos=1, maxsize=64, policy=DropPolicy.DROP_OLDEST))
            task = _start(_pump(cfg, self._config), "view configs", self.failures)
            self._stack.callback(task.cancel)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    def _config(self, msg: BusMessage) -> None:
        try:
            config: VdsConfig | ConfigError = VdsConfig.from_json(msg.payload, source=msg.topic)
        except ConfigError as exc:
            self.bad_configs += 1
            self.last_error = str(exc)
            config = exc
        self.latest[msg.topic] = config
        for plane in self._planes:
            plane.offer(msg.topic, config)

    def attach(self, plane: HostPlane) -> None:
        """Hand `plane` every config from now on, starting with the latest ones."""
        self._planes.append(plane)
        for topic, config in self.latest.items():
            plane.offer(topic, config)

    def detach(self, plane: HostPlane) -> None:
        """Stop handing configs to `plane`."""
        with contextlib.suppress(ValueError):
            self._planes.remove(plane)


# ----------------------------------------------------------------------------- host plane
ApplyFn = Callable[[VdsConfig], Awaitable[frozenset[int]]]


@dataclass(slots=True)
class HostPlaneCounters:
    """Config documents a host saw, applied, ignored, or refused."""

    applied: int = 0
    stale: int = 0
    not_member: int = 0
    refused: int = 0
    last_error: str = ""


class HostPlane:
    """One host's side of the management plane: follows configs, reports status and presence.

    `apply(config)` reconfigures the local proxy switch live and returns the VLANs that now have
    local ports on it. The bus must have been opened with this host's presence topic.
    """

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        *,
        host: str,
        session: int,
        apply: ApplyFn,
        extra_status: Callable[[], dict[str, Any]] | None = None,
        on_event: Callable[[str], None] | None = None,
        view: FabricView | None = None,
    ) -> None:
        self.view = view
        self.extra_status = extra_status
        self.on_event = on_event or (lambda text: None)
        self.refused: tuple[str, int, str] | None = None
        self.bus = bus
        self.topics = topics
        self.host = host
        self.session = session
        self.apply = apply
        self.peers = view.peers if view is not None else Peers(topics)
        self.running: dict[str, VdsConfig] = {}
        #: with a shared view: the latest config (or why it was refused) per topic, not yet
        #: taken; newer versions replace older ones waiting here (versions only go up)
        self._inbox: dict[str, VdsConfig | ConfigError] = {}
        self._inbox_ready = asyncio.Event()
        self.vlans: dict[str, frozenset[int]] = {}
        self.links: dict[str, ProxyLink] = {}
        self.counters = HostPlaneCounters()
        self.failures: Failures = []
        self._applied = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        if self.view is not None:
            try:
                await self.report()
                task = _start(self._follow_inbox(), f"{self.host} config", self.failures)
                self._stack.callback(task.cancel)
                self.view.attach(self)
                self._stack.callback(self.view.detach, self)
            except BaseException:
                await self._stack.aclose()
                raise
            return self
        try:
            for flt in (self.topics.all_presence, self.topics.all_status):
                sub = await self._stack.enter_async_context(
                    self.bus.subscribe(flt, qos=1, policy=DropPolicy.DROP_OLDEST)
                )
                task = _start(_pump(sub, self.peers.handle), f"peers {flt}", self.failures)
                self._stack.callback(task.cancel)
            cfg = await self._stack.enter_async_context(
                self.bus.subscribe(
                    self.topics.all_vds_configs, qos=1, maxsize=64, policy=DropPolicy.DROP_OLDEST
                )
            )
            await self.report()
            task = _start(self._follow(cfg), f"{self.host} config", self.failures)
            self._stack.callback(task.cancel)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    def attach_link(self, link: ProxyLink) -> None:
        """Keep `link`'s flood subscriptions in step with the VLANs of its vDS."""
        self.links[link.vds] = link

    async def _follow(self, sub: Subscription) -> None:
        async for msg in sub:
            await self.handle_config(msg)

    def offer(self, topic: str, config: VdsConfig | ConfigError) -> None:
        """A config (decoded once by the shared view, or why it could not be) for `_take`."""
        self._inbox[topic] = config
        self._inbox_ready.set()

    async def _follow_inbox(self) -> None:
        while True:
            await self._inbox_ready.wait()
            self._inbox_ready.clear()
            items = list(self._inbox.values())
            self._inbox.clear()
            for item in items:
                await self._take(item)

    async def handle_config(self, msg: BusMessage) -> None:
        """Apply a published config if it is for us and newer than what we run."""
        try:
            config: VdsConfig | ConfigError = VdsConfig.from_json(msg.payload, source=msg.topic)
        except ConfigError as exc:
            config = exc
        await self._take(config)

    async def _take(self, config: VdsConfig | ConfigError) -> None:
        c = self.counters
        if isinstance(config, ConfigError):
            c.refused += 1
            c.last_error = str(config)
            return
        if self.host not in config.hosts:
            c.not_member += 1
            return
        running = self.running.get(config.name)
        if running is not None and config.version <= running.version:
            c.stale += 1
            return
        try:
            vlans = await self.apply(config)
        except ConfigError as exc:
            c.refused += 1
            c.last_error = str(exc)
            self.refused = (config.name, config.version, str(exc))
            self.on_event(f"refused {config.name} v{config.version}: {exc}")
            await self.report()
            return
        self.running[config.name] = config
        self.vlans[config.name] = vlans
        link = self.links.get(config.name)
        if link is not None:
            await link.set_vlans(vlans)
        c.applied += 1
        self.on_event(f"runs {config.name} v{config.version} (VLANs with ports: "
                      f"{sorted(vlans) if vlans else 'none yet'})")
        await self.report()
        self._applied.set()

    async def update_vlans(self, vds: str, vlans: frozenset[int]) -> None:
        """Local ports changed (a VM came or left): follow the new VLAN set and report it."""
        if self.vlans.get(vds) != vlans:
            self.vlans[vds] = vlans
            self.on_event(f"{vds}: VLANs with ports {sorted(vlans)}")
            link = self.links.get(vds)
            if link is not None:
                await link.set_vlans(vlans)
        await self.report()

    async def report(self) -> None:
        """Publish this host's status (retained): versions it runs and VLANs with ports."""
        doc = {
            **(self.extra_status() if self.extra_status else {}),
            "host": self.host,
            "session": self.session,
            "refused": (
                {"vds": self.refused[0], "version": self.refused[1], "error": self.refused[2]}
                if self.refused else None
            ),
            "vds": {
                name: {"version": cfg.version, "vlans": sorted(self.vlans.get(name, ()))}
                for name, cfg in self.running.items()
            },
        }
        await self.bus.publish(
            self.topics.status(self.host), json.dumps(doc, sort_keys=True).encode(),
            qos=1, retain=True,
        )

    async def wait_version(self, vds: str, version: int, *, within_s: float = 10.0) -> None:
        """Return once this host runs `vds` at ≥ `version`."""
        async def wait() -> None:
            while (self.running.get(vds) is None) or self.running[vds].version < version:
                self._applied.clear()
                await self._applied.wait()

        try:
            await asyncio.wait_for(wait(), within_s)
        except TimeoutError:
            raise TransportError(
                f"{self.host}: {vds} version {version} not received within {within_s} s"
            ) from None


# ----------------------------------------------------------------------------- proxy switch
class ProxySwitch:
    """A host's member of a vDS: a `StandardSwitch` configured from the `VdsConfig`.

    Each vDS uplink maps to a host NIC (`config.hosts[host]`); that PIF is the proxy switch's
    uplink, and what leaves it goes to the other hosts through the `ProxyLink` (the bus plays the
    physical network). Port groups are added or updated live; removing a port group that still
    has ports is refused (as vCenter refuses it) and the host keeps running its old version.
    """

    def __init__(self, host: Host, vds: str) -> None:
        self.host = host
        self.vds = vds
        self.switch: StandardSwitch = host.add_switch(vds)
        self.uplinks: dict[str, Pif] = {}
        self.config: VdsConfig | None = None
        self._rx_pif: Pif | None = None
        #: mirroring sessions and IPFIX (netsim.vds.monitoring)
        self.monitoring = ProxyMonitoring(self.switch, self.uplinks, self.switch.clock,
                                          host.name)
        self.new_meter: Any = None  # a flow meter `apply` made, for the host to export from

    def vm_ports(self) -> list[VmPort]:
        """The VM ports plugged into this proxy switch."""
        return [p for p in self.switch.ports.values() if isinstance(p, VmPort)]

    def vlans(self) -> frozenset[int]:
        """VLANs (port group VLAN IDs; 4095 = all) that local VM ports use, and for private
        VLAN ports every VLAN they receive (a promiscuous port: its secondaries), and the RSPAN
        VLANs of local mirror destinations."""
        own = {p.sw_group.vlan for p in self.vm_ports()}
        pv = self.switch.pvlan
        own |= self.switch.span_vlans.keys()  # RSPAN VLANs a local destination session takes
        return frozenset(own.union(*(pv.receives(v) for v in own if v in pv)))

    def apply(self, config: VdsConfig) -> frozenset[int]:
        """Reconfigure live to `config`; returns the VLANs with local ports."""
        mapping = config.hosts.get(self.host.name)
        if mapping is None:
            raise ConfigError(f"{config.name}: host {self.host.name} is not a member")
        # check everything first so a refused config changes nothing
        wanted = {pg.name for pg in config.portgroups}
        in_use = {p.sw_group.name for p in self.vm_ports()}
        gone = in_use - wanted
        if gone:
            raise ConfigError(
                f"{config.name} v{config.version}: port group(s) {sorted(gone)} still have "
                f"ports on {self.host.name}; move them first"
            )
        for up, nic in mapping.items():
            pif = self.host.pifs.get(nic)
            if up not in self.uplinks and pif is not None and pif.switch is not None:
                raise ConfigError(
                    f"{config.name}: {self.host.name}/{nic} (for {up}) already belongs to "
                    f"switch {pif.switch.name}"
                )
        # each vDS uplink name → the host NIC behind it (the teaming policies name NICs here)
        nics = {up: (self.uplinks[up].name if up in self.uplinks else nic)
                for up, nic in mapping.items()}
        groups = {
            pg.name: PortGroup(
                pg.name,
                pg.vlan,
                SecurityPolicy(
                    pg.security.promiscuous, pg.security.mac_changes, pg.security.forged_transmits
                ),
                shaping=_shaping(pg.shaping_out),
                egress_shaping=_shaping(pg.shaping_in),
                teaming=_teaming(pg.teaming, nics,
                                 {lag.name: lag.uplinks for lag in config.lags}),
                blocked=pg.blocked,
                traffic_rules=pg.traffic_rules,
            )
            for pg in config.portgroups
        }
        pmap = config.pvlan_map()
        # then apply
        if pmap != self.switch.pvlan:
            self.switch.pvlan = pmap
        if self.switch.mtu != config.max_mtu:
            self.switch.mtu = config.max_mtu
        for up, nic in mapping.items():
            if up not in self.uplinks:
                pif = self.host.pifs.get(nic) or self.host.add_pif(nic)
                self.switch.add_uplink(pif)
                self.uplinks[up] = pif
        for name in list(self.switch.port_groups):
            if name not in wanted:
                self.switch.remove_port_group(name)
        for pg in config.portgroups:
            group = groups[pg.name]
            old = self.switch.port_groups.get(pg.name)
            if old is None:
                self.switch.add_port_group(group)
            elif old != group:
                self.switch.update_port_group(group)
        if self.switch.uplink_rules != config.uplink_traffic_rules:
            self.switch.uplink_rules = config.uplink_traffic_rules
        self.new_meter = self.monitoring.apply(config.vspan_sessions, config.ipfix)
        start_team_monitors(self.host.fabric, self.switch)  # beacon probing, LBT
        self.config = config
        return self.vlans()

    def deliver(self, vid: int, frame: bytes) -> None:
        """A frame from another host enters as the physical network hands it over: a
        broadcast or multicast through every uplink that VM ports of its VLAN are pinned to
        (each uplink passes it only to the ports pinned there, so every VM gets one copy); a
        unicast through the uplink its destination is pinned to, else the first in use."""
        sw = self.switch
        in_use = sw.uplinks_in_use()
        if len(in_use) == 1:  # the common case: one uplink carries everything
            pif = self._rx_pif
            if pif is None or pif not in in_use:
                pif = self._rx_pif = next(iter(in_use))
            pif.receive(frame)
            return
        if not in_use:
            for pif in self.uplinks.values():
                pif.counters.drop("link-down")
                return
            return
        if frame[0] & 1:
            pinned = sw.uplinks_pinned(vid)
            for pif in pinned:
                pif.receive(frame)
            if not pinned:
                self._in_order(in_use)[0].counters.drop("no-destination")
            return
        port = sw.mac_table.lookup(sw.learning_vlan(vid), frame[0:6], sw.clock.now_ns())
        pif = sw.uplink_for(port) if isinstance(port, VmPort) else None
        if pif is None or pif not in in_use:
            pif = self._in_order(in_use)[0]
        pif.receive(frame)

    def deliver_batch(self, frames: list[tuple[int, bytes]]) -> None:
        """`deliver` for the frames of one message from another host, in order: switched as
        one batch when a single uplink carries everything."""
        in_use = self.switch.uplinks_in_use()
        if len(in_use) != 1:
            for vid, frame in frames:
                self.deliver(vid, frame)
            return
        pif = self._rx_pif
        if pif is None or pif not in in_use:
            pif = self._rx_pif = next(iter(in_use))
        pif.receive_batch([f for _, f in frames])

    def _in_order(self, in_use: frozenset) -> list[Pif]:
        return [p for p in self.switch.uplinks if p in in_use]

    async def pump(self, pif: Pif, link: ProxyLink) -> None:
        """Carry what leaves uplink `pif` to the other hosts, in batches per destination host
        and flood group: frames ready on a wake-up are staged together, the loop gets one more
        turn (guests and other uplinks sending in it join the same batches), and the partly
        filled batches go out when the uplink has gone idle, or once the oldest waiting frame
        has lingered `link.linger_ns` while traffic keeps coming. A batch that fills up
        (frames or bytes) goes out at once, so nothing is buffered without bound."""
        queue = pif.queue
        get_batch = queue.get_batch
        send_many = link.send_many
        while True:
            await send_many(await get_batch())
            if not queue.items:
                await asyncio.sleep(0)
            if queue.items and not link.linger_over():
                continue
            await link.flush()


def _teaming(t: DvTeaming | None, nics: dict[str, str],
             lags: dict[str, tuple[str, ...]] | None = None) -> TeamingPolicy | None:
    """A distributed port group's teaming over vDS uplink names, as a policy over this host's
    NICs (uplinks this host does not map are left out; if it maps none of them, the group
    uses all of this host's uplinks). A LAG in the order stands for its uplinks, all active
    and hashed per frame (in distributed mode the bus carries the frames: no LACP on it)."""
    if t is None:
        return None
    lags = lags or {}

    def nics_of(names: tuple[str, ...]) -> tuple[str, ...]:
        out = [nics[m] for u in names for m in lags.get(u, (u,)) if m in nics]
        return tuple(dict.fromkeys(out))

    active = nics_of(t.active)
    standby = tuple(n for n in nics_of(t.standby) if n not in active)
    if (t.active or t.standby) and not active and not standby:
        return None
    lb = LoadBalancing(t.policy)
    if t.active and t.active[0] in lags:
        lb = LoadBalancing.IP_HASH
    return TeamingPolicy(active=active, standby=standby,
                         load_balancing=lb,
                         notify_switches=t.notify_switches, failback=t.failback,
                         failure_detection=FailureDetection(t.failure_detection))


def _shaping(s: DvShaping | None) -> ShapingPolicy | None:
    return ShapingPolicy(s.average_bps, s.peak_bps, s.burst_bytes) if s is not None else None
