"""In-process bus: the default when no broker is given, and the twin the tests run MQTT against.

`MemoryBroker` keeps retained messages and the connected clients; `MemoryBus` is one client.
The broker can also play the failures a real network has — `partition(client_id)` cuts one
client off (its will fires, as after a keep-alive timeout), `heal(client_id)` lets it back, and
`restart()` drops every client and all retained state, like restarting a broker without
persistence — so the distributed switch's recovery paths are tested without a broker.
"""
from __future__ import annotations

import asyncio
import itertools
from types import TracebackType
from typing import Self

from netsim.errors import TransportError
from netsim.vds.transport.bus import (
    DEFAULT_QUEUE_SIZE,
    PRESENCE_OFFLINE,
    PRESENCE_ONLINE,
    BusCounters,
    BusMessage,
    BusState,
    DropPolicy,
    Subscription,
    _SubscriptionSet,
    topic_matches,
    validate_topic,
)

_ids = itertools.count(1)


class MemoryBroker:
    """Retained messages and connected clients of an in-process bus."""

    def __init__(self) -> None:
        self.retained: dict[str, BusMessage] = {}
        self._clients: dict[str, MemoryBus] = {}
        self._partitioned: set[str] = set()
        #: buses that want a connection (entered, not closed), connected or not
        self._members: dict[str, MemoryBus] = {}

    # -- used by MemoryBus ----------------------------------------------------------------
    def _connect(self, bus: MemoryBus) -> None:
        if bus.client_id in self._partitioned:
            raise TransportError(f"in-memory broker: client {bus.client_id!r} is partitioned")
        old = self._clients.get(bus.client_id)
        if old is not None and old is not bus:
            # MQTT takes over a session with the same client id; the old client is cut off.
            old._lost(fire_will=False)
        self._clients[bus.client_id] = bus

    def _disconnect(self, bus: MemoryBus, *, fire_will: bool) -> None:
        if self._clients.get(bus.client_id) is bus:
            del self._clients[bus.client_id]
            if fire_will and bus.will is not None:
                topic, payload = bus.will
                self._route(BusMessage(topic, payload, 1, True))

    def _route(self, msg: BusMessage) -> None:
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        # A subscriber sees a live message with retain=False, as MQTT delivers it.
        live = BusMessage(msg.topic, msg.payload, msg.qos, False)
        for client in list(self._clients.values()):
            client._subs.dispatch(live, client.counters)

    def _retained_for(self, topic_filter: str) -> list[BusMessage]:
        return [m for t, m in self.retained.items() if topic_matches(topic_filter, t)]

    # -- failure injection ----------------------------------------------------------------
    def partition(self, client_id: str) -> None:
        """Cut `client_id` off the broker; its last will is published."""
        self._partitioned.add(client_id)
        bus = self._clients.get(client_id)
        if bus is not None:
            bus._lost(fire_will=True)

    def heal(self, client_id: str) -> None:
        """Let `client_id` reach the broker again; it reconnects and resyncs."""
        self._partitioned.discard(client_id)
        bus = self._members.get(client_id)
        if bus is not None:
            bus._try_reconnect()

    def restart(self) -> None:
        """Drop every client and every retained message; clients reconnect by themselves."""
        for bus in list(self._clients.values()):
            bus._lost(fire_will=False)
        self.retained.clear()
        for bus in list(self._members.values()):
            bus._try_reconnect()

    def is_connected(self, client_id: str) -> bool:
        """True while a client with that id is connected."""
        return client_id in self._clients


class MemoryBus:
    """One client of a `MemoryBroker` (see `netsim.vds.transport.bus.Bus` for the semantics)."""

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        client_id: str | None = None,
        presence_topic: str | None = None,
        outbox_size: int = 1024,
    ) -> None:
        self.broker = broker
        self.client_id = client_id or f"hvsim-mem-{next(_ids)}"
        self.presence_topic = presence_topic
        self.will = (presence_topic, PRESENCE_OFFLINE) if presence_topic else None
        self.counters = BusCounters()
        self._state = BusState(self.counters, outbox_size)
        self._subs = _SubscriptionSet()
        self._connected = False
        self._wants_connection = False
        self._connected_event = asyncio.Event()

    @property
    def connected(self) -> bool:
        """True while attached to the broker."""
        return self._connected

    async def __aenter__(self) -> Self:
        self._wants_connection = True
        self.broker._connect(self)
        self.broker._members[self.client_id] = self
        self._on_connected()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._wants_connection = False
        if self.broker._members.get(self.client_id) is self:
            del self.broker._members[self.client_id]
        if self._connected and self.presence_topic:
            await self.publish(self.presence_topic, PRESENCE_OFFLINE, qos=1, retain=True)
        if self._connected:
            self.broker._disconnect(self, fire_will=False)
        self._connected = False
        self._connected_event.clear()

    async def abort(self) -> None:
        """Vanish as a crashed process does: the broker publishes our will."""
        self._wants_connection = False
        if self.broker._members.get(self.client_id) is self:
            del self.broker._members[self.client_id]
        self._lost(fire_will=True)

    # -- connection state -----------------------------------------------------------------
    def _on_connected(self) -> None:
        self._connected = True
        self.counters.connects += 1
        if self.presence_topic:
            self._state.remember(self.presence_topic, PRESENCE_ONLINE, 1, True)
        for sub in self._subs.subs:
            for msg in self.broker._retained_for(sub.topic_filter):
                sub._deliver(msg)
        for topic, payload, qos, retain in self._state.replay():
            self._send(topic, payload, qos, retain)
        self._connected_event.set()

    def _lost(self, *, fire_will: bool) -> None:
        if not self._connected:
            return
        self._connected = False
        self._connected_event.clear()
        self.counters.disconnects += 1
        self.broker._disconnect(self, fire_will=fire_will)

    def _try_reconnect(self) -> None:
        if self._connected or not self._wants_connection:
            return
        try:
            self.broker._connect(self)
        except TransportError:
            return
        self._on_connected()

    async def wait_connected(self, within_s: float | None = None) -> None:
        """Return once connected; TransportError after `within_s` seconds."""
        try:
            await asyncio.wait_for(self._connected_event.wait(), within_s)
        except TimeoutError:
            raise TransportError(
                f"in-memory bus {self.client_id!r}: not connected after {within_s} s"
            ) from None

    # -- publish / subscribe --------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Send `payload` on `topic` to every matching subscription of every client."""
        validate_topic(topic)
        if qos not in (0, 1):
            raise TransportError(f"QoS must be 0 or 1, got {qos}")
        payload = bytes(payload)
        self._state.remember(topic, payload, qos, retain)
        if not self._connected:
            self._state.park(topic, payload, qos, retain)
            return
        self._send(topic, payload, qos, retain)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.counters.tx_messages += 1
        self.counters.tx_bytes += len(payload)
        self.broker._route(BusMessage(topic, payload, qos, retain))

    def subscribe(
        self,
        topic_filter: str,
        *,
        qos: int = 0,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        policy: DropPolicy = DropPolicy.DROP_NEWEST,
    ) -> Subscription:
        """A subscription to enter with `async with`; retained matches arrive first."""
        return Subscription(self, topic_filter, qos=qos, maxsize=maxsize, policy=policy)

    async def _add_subscription(self, sub: Subscription) -> None:
        self._subs.subs.append(sub)
        if self._connected:
            for msg in self.broker._retained_for(sub.topic_filter):
                if not sub._deliver(msg):
                    self.counters.rx_dropped_queue_full += 1

    async def _remove_subscription(self, sub: Subscription) -> None:
        if sub in self._subs.subs:
            self._subs.subs.remove(sub)
