"""MQTT bus: the `Bus` protocol over aiomqtt to a real broker (mosquitto here; any MQTT 5 broker).

aiomqtt and paho errors are translated to `TransportError` where they enter; a refused login says
so in words. The client reconnects by itself after the broker goes away (restart, partition):
on every (re)connect it re-subscribes, re-publishes its presence and the retained messages it
owns, and flushes the bounded outbox of QoS 1 messages published meanwhile. While disconnected,
QoS 0 messages are dropped and counted, as a link that is down drops frames.

MQTT 5 subscription identifiers route each incoming message to exactly the subscriptions whose
filter it matched (one broker subscription per distinct filter, fanned out locally).

Known difference from the in-process bus: a second local subscription to a filter this client
already subscribes to does not receive that filter's retained messages (the broker sends them
only on the first SUBSCRIBE). hvsim's own components never subscribe one filter twice per client.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

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
    validate_topic,
)

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
#: aiomqtt's own incoming queue (between paho's socket callback and our dispatcher).
CLIENT_QUEUE_SIZE = 65536
#: paho's outgoing queue; publishing beyond it fails and is counted as tx_dropped_queue_full.
CLIENT_OUTGOING_SIZE = 65536

_AUTH_CODES = {4, 5, 134, 135}  # 3.1.1: bad user/password, not authorised; 5.0: the same


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where the broker is and how to log in (parsed from `mqtt://` / `mqtts://` URLs)."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca: Path | None = None
    #: skip the broker's hostname check (self-signed lab certificates); the CA is still checked
    tls_insecure: bool = False
    keepalive: int = 5

    @property
    def url(self) -> str:
        """The broker's URL without credentials (for messages)."""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    def with_login(self, username: str | None, password: str | None) -> BrokerSettings:
        """A copy with another user name and password."""
        return replace(self, username=username, password=password)


def parse_broker_url(
    url: str,
    *,
    username: str | None = None,
    password_file: Path | None = None,
    tls_ca: Path | None = None,
) -> BrokerSettings:
    """`mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` plus optional login → BrokerSettings.

    The password is read from `password_file` (first line), never from the command line.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise TransportError(f"broker URL {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parsed.password:
        raise TransportError(
            f"broker URL {parsed.scheme}://{parsed.hostname}: do not put a password in the URL; "
            "use --password-file"
        )
    tls = parsed.scheme == "mqtts" or tls_ca is not None
    try:
        port = parsed.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    except ValueError as exc:
        raise TransportError(f"broker URL {url!r}: {exc}") from None
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise TransportError(
                f"password file {password_file}: cannot read a password ({exc})"
            ) from None
    if tls_ca is not None and not tls_ca.is_file():
        raise TransportError(f"TLS CA file {tls_ca}: no such file")
    return BrokerSettings(
        host=parsed.hostname,
        port=port,
        username=username or parsed.username,
        password=password,
        tls=tls,
        tls_ca=tls_ca,
    )


def _explain(exc: BaseException, settings: BrokerSettings, doing: str) -> TransportError:
    """Our error for an aiomqtt/paho/OS failure, in words a user can act on."""
    rc = getattr(exc, "rc", None)
    code = rc.value if isinstance(rc, ReasonCode) else rc
    if code in _AUTH_CODES:
        who = f"user {settings.username!r}" if settings.username else "an anonymous client"
        return TransportError(
            f"broker {settings.url} refused the login of {who}: bad user name or password, or not "
            "authorised (check --user and --password-file against the broker's password file)"
        )
    if isinstance(exc, ssl.SSLError):
        return TransportError(f"broker {settings.url}: TLS failed while {doing}: {exc}")
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower() and code is None:
        return TransportError(
            f"broker {settings.url}: connection refused while {doing} (is it running?)"
        )
    return TransportError(f"broker {settings.url}: {doing} failed: {text}")


class _CountingQueue(asyncio.Queue):  # type: ignore[type-arg]
    """aiomqtt's incoming queue, bounded; what it cannot hold is counted, not only logged."""

    counters: BusCounters | None = None

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize or CLIENT_QUEUE_SIZE)

    def put_nowait(self, item: Any) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            if self.counters is not None:
                self.counters.rx_dropped_queue_full += 1
            raise


class _Filter:
    """One broker-side subscription (a distinct filter) and the local subscriptions it feeds."""

    def __init__(self, topic_filter: str, ident: int, qos: int, no_local: bool) -> None:
        self.topic_filter = topic_filter
        self.ident = ident
        self.qos = qos
        self.no_local = no_local
        self.subs: list[Subscription] = []


class MqttBus:
    """One MQTT client speaking the `Bus` protocol; reconnects by itself once connected."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str | None = None,
        presence_topic: str | None = None,
        outbox_size: int = 1024,
        reconnect_max_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.client_id = client_id or f"hvsim-{id(self):x}"
        self.presence_topic = presence_topic
        self.counters = BusCounters()
        self.reconnect_max_s = reconnect_max_s
        self._state = BusState(self.counters, outbox_size)
        self._filters: dict[str, _Filter] = {}
        self._by_ident: dict[int, _Filter] = {}
        self._idents = itertools.count(1)
        self._client: aiomqtt.Client | None = None
        self._connected_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wants_connection = False
        self.last_error: TransportError | None = None

    @property
    def connected(self) -> bool:
        """True while a session with the broker is up."""
        return self._connected_event.is_set()

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._wants_connection = True
        await self._connect()  # the first failure is the user's to see, not retried
        self._task = asyncio.create_task(self._supervise(), name=f"mqtt-bus-{self.client_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._wants_connection = False
        if self.connected and self.presence_topic:
            with contextlib.suppress(TransportError):
                await self.publish(self.presence_topic, PRESENCE_OFFLINE, qos=1, retain=True)
        await self._stop_task()
        await self._close_client(clean=True)

    async def abort(self) -> None:
        """Leave as a crashed host does: the broker publishes our last will."""
        self._wants_connection = False
        await self._stop_task()
        await self._close_client(clean=False)

    async def _stop_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _close_client(self, *, clean: bool) -> None:
        client, self._client = self._client, None
        was_connected = self.connected
        self._connected_event.clear()
        if client is None:
            return
        if was_connected:
            self.counters.disconnects += 1
        if not clean:
            # MQTT 5 reason 0x04 "Disconnect with Will Message": the broker publishes our will.
            with contextlib.suppress(Exception):
                reason = ReasonCode(PacketTypes.DISCONNECT, identifier=4)
                client._client.disconnect(reasoncode=reason)
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)

    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        will = None
        if self.presence_topic:
            will = aiomqtt.Will(self.presence_topic, PRESENCE_OFFLINE, qos=1, retain=True)
        tls_context = None
        if s.tls:
            tls_context = ssl.create_default_context(cafile=str(s.tls_ca) if s.tls_ca else None)
            if s.tls_insecure:
                tls_context.check_hostname = False
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=s.keepalive,
            timeout=10,
            queue_type=_CountingQueue,
            max_queued_outgoing_messages=CLIENT_OUTGOING_SIZE,
            tls_context=tls_context,
        )
        client._queue.counters = self.counters  # type: ignore[attr-defined]
        return client

    async def _connect(self) -> None:
        client = self._new_client()
        try:
            await client.__aenter__()
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
            raise _explain(exc, self.settings, "connecting") from None
        self._client = client
        try:
            for flt in self._filters.values():
                await self._broker_subscribe(flt)
            for topic, payload, qos, retain in self._state.replay():
                await self._send(topic, payload, qos, retain)
            if self.presence_topic:
                self._state.remember(self.presence_topic, PRESENCE_ONLINE, 1, True)
                await self._send(self.presence_topic, PRESENCE_ONLINE, 1, True)
        except (aiomqtt.MqttError, OSError) as exc:
            await self._close_client(clean=True)
            raise _explain(exc, self.settings, "re-subscribing") from None
        self.counters.connects += 1
        self.last_error = None
        self._connected_event.set()

    async def _supervise(self) -> None:
        """Dispatch incoming messages; after a lost connection, reconnect with backoff."""
        while self._wants_connection:
            client = self._client
            if client is not None:
                try:
                    await self._read(client)
                except aiomqtt.MqttError as exc:
                    self.last_error = _explain(exc, self.settings, "receiving")
                await self._close_client(clean=True)
            delay = 0.05
            while self._wants_connection and self._client is None:
                try:
                    await self._connect()
                except TransportError as exc:
                    self.last_error = exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max_s)

    async def _read(self, client: aiomqtt.Client) -> None:
        counters = self.counters
        by_ident = self._by_ident
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else bytes(m.payload or b"")
            msg = BusMessage(str(m.topic), payload, m.qos, m.retain)
            counters.rx_messages += 1
            counters.rx_bytes += len(payload)
            idents = getattr(m.properties, "SubscriptionIdentifier", None) if m.properties else None
            if idents:
                targets = [by_ident[i] for i in idents if i in by_ident]
            else:  # a broker without subscription identifiers: match locally
                targets = [f for f in self._filters.values() if m.topic.matches(f.topic_filter)]
            for flt in targets:
                for sub in flt.subs:
                    if not sub._deliver(msg):
                        counters.rx_dropped_queue_full += 1

    async def wait_connected(self, within_s: float | None = None) -> None:
        """Return once connected (again); TransportError after `within_s` seconds."""
        try:
            await asyncio.wait_for(self._connected_event.wait(), within_s)
        except TimeoutError:
            why = f" (last error: {self.last_error})" if self.last_error else ""
            raise TransportError(
                f"broker {self.settings.url}: not connected after {within_s} s{why}"
            ) from None

    # -- publish / subscribe --------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Send `payload` on `topic`; while disconnected QoS 0 is dropped, QoS 1 waits (bounded)."""
        validate_topic(topic)
        if qos not in (0, 1):
            raise TransportError(f"QoS must be 0 or 1, got {qos}")
        self._state.remember(topic, payload, qos, retain)
        if not self.connected:
            self._state.park(topic, payload, qos, retain)
            return
        try:
            await self._send(topic, payload, qos, retain)
        except aiomqtt.MqttCodeError as exc:
            if exc.rc == 15:  # MQTT_ERR_QUEUE_SIZE: paho's bounded outgoing queue is full
                self.counters.tx_dropped_queue_full += 1
                return
            self._state.park(topic, payload, qos, retain)
        except aiomqtt.MqttError:
            self._state.park(topic, payload, qos, retain)

    async def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("not connected")
        await client.publish(topic, payload, qos=qos, retain=retain)
        self.counters.tx_messages += 1
        self.counters.tx_bytes += len(payload)

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

    async def _broker_subscribe(self, flt: _Filter) -> None:
        assert self._client is not None
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = flt.ident
        await self._client.subscribe(
            flt.topic_filter,
            options=SubscribeOptions(qos=flt.qos, noLocal=flt.no_local),
            properties=props,
        )

    async def _add_subscription(self, sub: Subscription) -> None:
        flt = self._filters.get(sub.topic_filter)
        if flt is not None:
            flt.subs.append(sub)
            if flt.qos >= sub.qos:
                return
            flt.qos = sub.qos
        else:
            flt = _Filter(sub.topic_filter, next(self._idents), sub.qos, False)
            flt.subs.append(sub)
            self._filters[sub.topic_filter] = flt
            self._by_ident[flt.ident] = flt
        if self.connected:
            try:
                await self._broker_subscribe(flt)
            except aiomqtt.MqttError as exc:
                # The supervisor re-subscribes every filter when it reconnects.
                self.last_error = _explain(exc, self.settings, f"subscribing to {sub.topic_filter}")

    async def _remove_subscription(self, sub: Subscription) -> None:
        flt = self._filters.get(sub.topic_filter)
        if flt is None or sub not in flt.subs:
            return
        flt.subs.remove(sub)
        if flt.subs:
            return
        del self._filters[sub.topic_filter]
        del self._by_ident[flt.ident]
        if self.connected and self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.unsubscribe(sub.topic_filter)
