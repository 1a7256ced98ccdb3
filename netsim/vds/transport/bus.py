"""The Bus protocol: topic publish/subscribe that hosts of a distributed fabric talk through.

Two implementations share it: `memory.MemoryBus` (in-process, the default, no broker) and
`mqtt.MqttBus` (aiomqtt → a real MQTT broker such as mosquitto). Everything built on the bus —
the distributed switch's management plane, the batched data plane, host presence — runs the same
on both, and the test suite runs the same cases against both.

Semantics (MQTT's, so the in-process bus is an honest stand-in):
- topics are `/`-separated; filters may use `+` (one level) and `#` (the rest, last level only);
- a retained message is stored per topic and delivered to every later subscriber; an empty
  retained payload deletes it;
- QoS 0 (data: may be lost, losses are counted upstream from sequence numbers) or QoS 1 (config);
- presence: a bus given a `presence_topic` publishes `online` there (retained) when it connects,
  `offline` when it closes cleanly, and registers `offline` as its last will, which the broker
  publishes when the client vanishes without a clean close (crash, kill, lost link);
- every subscription has a bounded queue with a stated drop policy, and counts what it drops.
"""
from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from netsim.errors import TransportError

PRESENCE_ONLINE = b"online"
PRESENCE_OFFLINE = b"offline"

DEFAULT_QUEUE_SIZE = 4096


class DropPolicy(enum.Enum):
    """What a full subscription queue does with one more message."""

    #: Keep what is queued, drop the arriving message (a NIC ring's tail drop). For data.
    DROP_NEWEST = "drop-newest"
    #: Drop the oldest queued message to make room (latest state wins). For config/presence.
    DROP_OLDEST = "drop-oldest"


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One message as a subscriber sees it."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(slots=True)
class BusCounters:
    """What a bus client did; every message it lost is counted under a reason."""

    tx_messages: int = 0
    tx_bytes: int = 0
    rx_messages: int = 0
    rx_bytes: int = 0
    #: QoS 0 messages not sent because the broker was unreachable (like a link down).
    tx_dropped_disconnected: int = 0
    #: QoS ≥1 messages dropped from the bounded outbox kept while disconnected.
    tx_dropped_outbox_full: int = 0
    #: messages refused by the client library's bounded outgoing queue.
    tx_dropped_queue_full: int = 0
    #: messages dropped by full subscription queues (sum over subscriptions).
    rx_dropped_queue_full: int = 0
    connects: int = 0
    disconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for reports and JSON)."""
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


def validate_topic(topic: str) -> str:
    """Check a topic to publish to: non-empty, no wildcards, no NUL; return it."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise TransportError(f"invalid topic to publish to: {topic!r} (no wildcards, not empty)")
    if len(topic.encode()) > 65535:
        raise TransportError(f"topic longer than 65535 bytes: {topic[:40]!r}...")
    return topic


def validate_filter(topic_filter: str) -> str:
    """Check a subscription filter: `+` fills a whole level, `#` only as the whole last level."""
    if not topic_filter or "\0" in topic_filter:
        raise TransportError(f"invalid topic filter: {topic_filter!r}")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TransportError(f"invalid topic filter {topic_filter!r}: '#' must be the last")
        if "+" in level and level != "+":
            raise TransportError(f"invalid topic filter {topic_filter!r}: '+' must fill a level")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when `topic` matches the MQTT filter `topic_filter` (`+`, `#`, `$`-topics excluded)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


class Subscription:
    """A bounded queue of the messages matching one topic filter.

    Use as an async context manager (`async with bus.subscribe("lab/#") as sub:`); iterate it,
    or `await sub.get()`, or take everything ready with `sub.get_ready()` (batching). When the
    queue is full the `policy` decides which message is dropped; `dropped` counts them.
    """

    def __init__(
        self,
        bus: SubscriptionOwner,
        topic_filter: str,
        *,
        qos: int,
        maxsize: int,
        policy: DropPolicy,
    ) -> None:
        if maxsize < 1:
            raise TransportError(f"subscription queue size must be ≥1, got {maxsize}")
        if qos not in (0, 1):
            raise TransportError(f"QoS must be 0 or 1, got {qos}")
        self._bus = bus
        self.topic_filter = validate_filter(topic_filter)
        self.qos = qos
        self.maxsize = maxsize
        self.policy = policy
        self.delivered = 0
        self.dropped = 0
        self._queue: collections.deque[BusMessage] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False

    # -- fed by the bus -------------------------------------------------------------------
    def _deliver(self, msg: BusMessage) -> bool:
        """Queue `msg`; False (and counted) when the drop policy dropped a message."""
        if self._closed:
            return True
        ok = True
        if len(self._queue) >= self.maxsize:
            self.dropped += 1
            ok = False
            if self.policy is DropPolicy.DROP_NEWEST:
                return False
            self._queue.popleft()
        self._queue.append(msg)
        self.delivered += 1
        self._ready.set()
        return ok

    # -- consumer side -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._queue)

    async def get(self) -> BusMessage:
        """The next message, waiting for one."""
        while not self._queue:
            if self._closed:
                raise TransportError(f"subscription {self.topic_filter!r} is closed")
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def get_ready(self, limit: int | None = None) -> list[BusMessage]:
        """Every queued message (at most `limit`), without waiting."""
        q = self._queue
        if limit is None or limit >= len(q):
            out = list(q)
            q.clear()
            return out
        return [q.popleft() for _ in range(limit)]

    async def get_batch(self, limit: int | None = None) -> list[BusMessage]:
        """Wait for at least one message, then return all that are ready (at most `limit`)."""
        if not self._queue:
            self._queue.append(await self.get())
        return self.get_ready(limit)

    def __aiter__(self) -> AsyncIterator[BusMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[BusMessage]:
        while True:
            try:
                yield await self.get()
            except TransportError:
                return

    async def __aenter__(self) -> Self:
        await self._bus._add_subscription(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop receiving; wakes a waiting consumer, which then ends its iteration."""
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        await self._bus._remove_subscription(self)


class SubscriptionOwner(Protocol):
    """What a Subscription needs from its bus (internal)."""

    async def _add_subscription(self, sub: Subscription) -> None: ...
    async def _remove_subscription(self, sub: Subscription) -> None: ...


@runtime_checkable
class Bus(Protocol):
    """Publish/subscribe with retained messages, two QoS levels and presence."""

    client_id: str
    counters: BusCounters
    presence_topic: str | None

    @property
    def connected(self) -> bool:
        """True while the bus can reach its broker."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Send `payload` on `topic`. QoS 0 while disconnected is dropped and counted."""
        ...

    def subscribe(
        self,
        topic_filter: str,
        *,
        qos: int = 0,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        policy: DropPolicy = DropPolicy.DROP_NEWEST,
    ) -> Subscription:
        """A subscription to enter with `async with`; retained matches arrive first."""
        ...

    async def wait_connected(self, within_s: float | None = None) -> None:
        """Return once connected (again); TransportError after `within_s` seconds."""
        ...

    async def abort(self) -> None:
        """Vanish without a clean close (a crash): the broker publishes our last will."""
        ...


@dataclass
class _SubscriptionSet:
    """Subscriptions of one bus client, with a helper to fan a message out to them."""

    subs: list[Subscription] = field(default_factory=list)

    def dispatch(self, msg: BusMessage, counters: BusCounters) -> None:
        counters.rx_messages += 1
        counters.rx_bytes += len(msg.payload)
        for sub in self.subs:
            if not topic_matches(sub.topic_filter, msg.topic):
                continue
            # as MQTT does, a subscriber gets min(published QoS, subscribed QoS)
            m = msg
            if msg.qos > sub.qos:
                m = BusMessage(msg.topic, msg.payload, sub.qos, msg.retain)
            if not sub._deliver(m):
                counters.rx_dropped_queue_full += 1


class BusState:
    """What a bus client re-establishes after a reconnect (shared by both implementations).

    It remembers the retained messages this client published (each retained topic has one owner,
    so re-publishing them after a broker restart restores the broker's state), and keeps a bounded
    outbox of QoS ≥1 messages published while disconnected (oldest dropped first, counted).
    """

    def __init__(self, counters: BusCounters, outbox_size: int) -> None:
        self.counters = counters
        self.retained: dict[str, tuple[bytes, int]] = {}
        self.outbox: collections.deque[tuple[str, bytes, int, bool]] = collections.deque()
        self.outbox_size = outbox_size

    def remember(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = (payload, qos)
            else:
                self.retained.pop(topic, None)

    def park(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Keep a message published while disconnected: QoS 0 is dropped, QoS 1 waits."""
        if qos == 0:
            self.counters.tx_dropped_disconnected += 1
            return
        if retain:
            return  # `retained` already holds it; it is re-published on reconnect
        if len(self.outbox) >= self.outbox_size:
            self.outbox.popleft()
            self.counters.tx_dropped_outbox_full += 1
        self.outbox.append((topic, payload, qos, retain))

    def replay(self) -> list[tuple[str, bytes, int, bool]]:
        """Messages to send right after a (re)connect: own retained state, then the outbox."""
        out = [(t, p, q, True) for t, (p, q) in self.retained.items()]
        out.extend(self.outbox)
        self.outbox.clear()
        return out
