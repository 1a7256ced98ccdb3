"""One process per host name: a host checks, before it joins, that no live instance runs it.

MQTT takes a session over when a second client connects with the same client id, and the first
one reconnects and takes it back: two `hvsim host` processes started with the same name would
kick each other off the broker forever, silently. So a host joins in two steps:

1. `check_host_free` looks, on a probe connection that has no last will (so it can never mark
   the live host offline), at the host's retained presence and claim. Presence `online` means a
   live instance: refused, naming the host, the fabric and that instance. A host that crashed is
   not blocked: its last will has marked it offline (at once when its socket closed, within
   1.5× the keep-alive when it went silent). The same probe sends a message to the host's own
   topic and waits for it: if it never comes back, the broker's ACL denies the host its own
   topics, which is refused clearly too.
2. the host connects with a client id that names its instance, so even two
   instances that passed the check at the same moment never kick each other, and publishes its
   `HostClaim` retained; `ClaimWatch` then follows the claim topic: of two instances that both
   got in, the later-started one wins and the other learns it was superseded and leaves.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Self

from netsim.errors import TransportError
from netsim.vds.transport.bus import PRESENCE_ONLINE, Bus, DropPolicy, Subscription
from netsim.vds.transport.topics import Topics


class HostConflictError(TransportError):
    """Another live instance runs this host name in this fabric."""


class HostAccessError(TransportError):
    """The broker does not let this login publish and read the host's own topics."""


@dataclass(frozen=True, slots=True)
class HostClaim:
    """Which process runs a host: published retained on `host/<name>/claim`."""

    instance: str
    pid: int
    machine: str
    started: float

    @classmethod
    def new(cls) -> HostClaim:
        """A claim for this process, with a fresh random instance id."""
        return cls(os.urandom(6).hex(), os.getpid(), socket.gethostname(), time.time())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> HostClaim | None:
        """The claim in `data`, or None when it is not one (never raises)."""
        try:
            d = json.loads(data)
            return cls(str(d["instance"]), int(d["pid"]), str(d["machine"]), float(d["started"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            return None

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.machine}, since {when}, instance {self.instance}"


def claim_topic(topics: Topics, host: str) -> str:
    return f"{topics.host_root(host)}/claim"


async def check_host_free(
    probe: Bus,
    topics: Topics,
    host: str,
    claim: HostClaim,
    *,
    within_s: float = 5.0,
    stale_after_s: float | None = None,
) -> None:
    """Refuse (HostConflictError) when a live instance runs `host`; refuse (TransportError) when
    the broker does not let this login publish and read `host`'s own topics.

    `probe` is an open bus without presence. `stale_after_s` is how long a crashed-but-silent
    instance may still look online (1.5× its keep-alive), for the message.
    """
    probe_topic = f"{topics.host_root(host)}/probe/{claim.instance}"
    async with (
        probe.subscribe(topics.presence(host), qos=1, policy=DropPolicy.DROP_OLDEST) as pres,
        probe.subscribe(claim_topic(topics, host), qos=1, policy=DropPolicy.DROP_OLDEST) as cl,
        probe.subscribe(probe_topic, qos=1) as echo,
    ):
        # the broker sends the retained presence and claim before this echo comes back
        await probe.publish(probe_topic, claim.instance.encode(), qos=1)
        try:
            await asyncio.wait_for(echo.get(), within_s)
        except TimeoutError:
            raise HostAccessError(
                f"host {host} of fabric {topics.fabric}: the broker does not let this login "
                f"publish and read its own topics {topics.host_root(host)}/# (within {within_s} "
                "s); check the broker's ACL for this host's user"
            ) from None
        presence = _last(pres)
        other = HostClaim.from_json(c) if (c := _last(cl)) else None
    if presence == PRESENCE_ONLINE:
        who = f" ({other.describe()})" if other else ""
        hint = (f"; if it crashed, the broker marks it offline within {stale_after_s:.0f} s"
                if stale_after_s else "")
        raise HostConflictError(
            f"host {host} is already running in fabric {topics.fabric}{who}: stop it or use "
            f"another --name{hint}"
        )


def _last(sub: Subscription) -> bytes | None:
    msgs = sub.get_ready()
    return msgs[-1].payload if msgs else None


class ClaimWatch:
    """Publishes this instance's claim (retained) and notices when a later one supersedes it.

    Enter it on the host's own bus right after connecting; `superseded` is set (and
    `superseded_by` names the other instance) when an instance started after us claims the host.
    """

    def __init__(self, bus: Bus, topics: Topics, host: str, claim: HostClaim) -> None:
        self.bus = bus
        self.topics = topics
        self.host = host
        self.claim = claim
        self.superseded = asyncio.Event()
        self.superseded_by: HostClaim | None = None
        self._task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None

    async def __aenter__(self) -> Self:
        topic = claim_topic(self.topics, self.host)
        self._sub = self.bus.subscribe(topic, qos=1, policy=DropPolicy.DROP_OLDEST)
        await self._sub.__aenter__()
        await self.bus.publish(topic, self.claim.to_json(), qos=1, retain=True)
        self._task = asyncio.create_task(self._watch(self._sub), name=f"{self.host} claim")
        return self

    async def _watch(self, sub: Subscription) -> None:
        mine = (self.claim.started, self.claim.instance)
        async for msg in sub:
            c = HostClaim.from_json(msg.payload)
            # each instance subscribes before it claims, so each sees the other's claim; the
            # later-started one wins on both sides, whatever order the broker kept (an old
            # instance resuming after a stall re-publishes its claim, and still loses)
            if c is None or c.instance == self.claim.instance:
                continue
            if (c.started, c.instance) > mine:
                self.superseded_by = c
                self.superseded.set()

    def error(self) -> HostConflictError:
        """The error to leave with once superseded."""
        who = self.superseded_by.describe() if self.superseded_by else "another instance"
        return HostConflictError(
            f"host {self.host} of fabric {self.topics.fabric} was taken over by {who}; leaving"
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            await self._sub.close()
