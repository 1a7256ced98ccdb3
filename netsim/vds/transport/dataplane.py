"""Frames over the bus: batch them per topic on the way out, check and count them on the way in.

`BatchSender` gathers `(vid, frame)` pairs per destination topic and publishes a batch when it
holds `max_frames` frames or `max_bytes` bytes, or when `flush()` is called (the host agent
flushes once per wake-up: everything ready goes in as few messages as possible). Data is QoS 0.

`BatchReceiver` decodes batches from one subscription, checks that the host named inside the
batch is the host the topic belongs to (the broker's ACL lets a host publish only its own topics,
so a mismatch is a forgery), and counts every loss: malformed batches, forged sources, and frames
missing from each sender's stream (sequence gaps), per sender.
"""
from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

from netsim.clock import Clock
from netsim.vds.transport.batch import (
    MAX_BATCH_BYTES,
    MAX_BATCH_FRAMES,
    MAX_FRAME_LEN,
    BatchError,
    decode_batch,
    encode_batch,
)
from netsim.vds.transport.bus import Bus, BusMessage

#: per-record overhead + header slack used to keep a batch under max_bytes
_RECORD_OVERHEAD = 4
_HEADER_SLACK = 20 + 255


@dataclass(slots=True)
class SenderCounters:
    """What a BatchSender sent."""

    frames: int = 0
    batches: int = 0
    bytes: int = 0


class BatchSender:
    """Batches frames per topic for one source host and publishes them at QoS 0."""

    def __init__(
        self,
        bus: Bus,
        src: str,
        *,
        session: int,
        max_frames: int = 256,
        max_bytes: int = 64 * 1024,
        clock: Clock | None = None,
    ) -> None:
        if not 1 <= max_frames <= MAX_BATCH_FRAMES:
            raise ValueError(f"max_frames must be 1..{MAX_BATCH_FRAMES}")
        # a batch is published once it reaches max_bytes, so it may hold one frame more
        limit = MAX_BATCH_BYTES - _HEADER_SLACK - MAX_FRAME_LEN - _RECORD_OVERHEAD
        if not 1024 <= max_bytes <= limit:
            raise ValueError(f"max_bytes must be 1024..{limit}")
        self.bus = bus
        self.src = src
        self.session = session & 0xFFFFFFFF
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.counters = SenderCounters()
        self._pending: dict[str, list[tuple[int, bytes]]] = {}
        self._pending_bytes: dict[str, int] = {}
        self._seq: dict[str, int] = {}
        self._sealed: collections.deque[tuple[str, list[tuple[int, bytes]]]] = (
            collections.deque()
        )
        self.clock = clock
        #: clock ns when the oldest frame now waiting was added (None: nothing waits, or no clock)
        self.oldest_ns: int | None = None

    @property
    def pending(self) -> int:
        """Frames waiting to be published (in partly filled and in sealed batches)."""
        return sum(len(v) for v in self._pending.values()) + sum(len(f) for _, f in self._sealed)

    def add(self, topic: str, vid: int, frame: bytes) -> bool:
        """Queue one frame for `topic` without publishing; True when that filled its batch,
        which is then sealed (`publish_sealed()` sends it). Lets a caller add frames without a
        coroutine per frame; a batch never grows past `max_frames` / `max_bytes`."""
        batch = self._pending.get(topic)
        if self.oldest_ns is None and self.clock is not None:
            self.oldest_ns = self.clock.now_ns()
        if batch is None:
            batch = self._pending[topic] = []
            self._pending_bytes[topic] = 0
        size = self._pending_bytes[topic] + len(frame) + _RECORD_OVERHEAD
        batch.append((vid, frame))
        self._pending_bytes[topic] = size
        if len(batch) >= self.max_frames or size >= self.max_bytes:
            self._sealed.append((topic, batch))
            del self._pending[topic]
            del self._pending_bytes[topic]
            return True
        return False

    async def send(self, topic: str, vid: int, frame: bytes) -> None:
        """Queue one frame for `topic`; publishes when the topic's batch is full."""
        if self.add(topic, vid, frame):
            await self.publish_sealed()

    async def publish_sealed(self) -> None:
        """Publish every full batch, in the order they filled."""
        sealed = self._sealed
        while sealed:
            topic, frames = sealed.popleft()
            await self._publish_frames(topic, frames)

    async def publish(self, topic: str) -> None:
        """Publish the full batches, then `topic`'s partly filled one, now."""
        await self.publish_sealed()
        await self._publish(topic)

    async def flush(self) -> None:
        """Publish every full and every partly filled batch."""
        await self.publish_sealed()
        for topic in [t for t, b in self._pending.items() if b]:
            await self._publish(topic)
        self.oldest_ns = None

    async def _publish(self, topic: str) -> None:
        frames = self._pending.pop(topic, [])
        self._pending_bytes.pop(topic, None)
        if frames:
            await self._publish_frames(topic, frames)

    async def _publish_frames(self, topic: str, frames: list[tuple[int, bytes]]) -> None:
        seq = self._seq.get(topic, 0)
        payload = encode_batch(self.src, self.session, seq, frames)
        self._seq[topic] = seq + len(frames)
        await self.bus.publish(topic, payload, qos=0)
        c = self.counters
        c.frames += len(frames)
        c.batches += 1
        c.bytes += len(payload)


@dataclass(slots=True)
class ReceiverCounters:
    """What a BatchReceiver took in and what it could tell was lost."""

    frames: int = 0
    batches: int = 0
    bad_batches: int = 0
    forged_batches: int = 0
    lost_frames: int = 0
    restarts: int = 0
    last_error: str = ""
    lost_by_host: dict[str, int] = field(default_factory=dict)


class BatchReceiver:
    """Decodes batches; `host_of(topic)` names the host the topic belongs to (for the check)."""

    def __init__(self, host_of: Callable[[str], str | None], *, ignore_src: str | None = None):
        self.host_of = host_of
        self.ignore_src = ignore_src
        self.counters = ReceiverCounters()
        self._streams: dict[str, tuple[int, int]] = {}  # topic → (session, next_seq)

    def accept(self, msg: BusMessage) -> tuple[str, list[tuple[int, bytes]]] | None:
        """`(src_host, [(vid, frame), ...])` of one message, or None (counted) if unusable."""
        c = self.counters
        try:
            batch = decode_batch(msg.payload)
        except BatchError as exc:
            c.bad_batches += 1
            c.last_error = f"{msg.topic}: {exc}"
            return None
        owner = self.host_of(msg.topic)
        if owner is not None and owner != batch.src:
            c.forged_batches += 1
            c.last_error = f"{msg.topic}: batch claims source {batch.src!r}, topic is {owner!r}'s"
            return None
        if batch.src == self.ignore_src:
            return None
        n = len(batch.frames)
        stream = self._streams.get(msg.topic)
        if stream is not None:
            session, expected = stream
            if session != batch.session:
                c.restarts += 1
            elif batch.first_seq > expected:
                gap = batch.first_seq - expected
                c.lost_frames += gap
                c.lost_by_host[batch.src] = c.lost_by_host.get(batch.src, 0) + gap
        self._streams[msg.topic] = (batch.session, batch.first_seq + n)
        c.batches += 1
        c.frames += n
        return batch.src, batch.frames
