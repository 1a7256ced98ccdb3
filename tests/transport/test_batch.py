"""The frame-batch codec and the batched data plane over a bus."""
from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim.errors import TransportError
from netsim.vds.transport.batch import (
    HEADER,
    MAX_BATCH_BYTES,
    MAX_FRAME_LEN,
    BatchError,
    decode_batch,
    encode_batch,
)
from netsim.vds.transport.bus import BusMessage
from netsim.vds.transport.dataplane import BatchReceiver, BatchSender
from netsim.vds.transport.topics import Topics

FRAME = bytes.fromhex("ffffffffffff00163e000001 0806") + bytes(46)

frames_st = st.lists(
    st.tuples(st.integers(0, 4095), st.binary(min_size=14, max_size=1600)), max_size=40
)


@settings(max_examples=60, deadline=None)
@given(frames=frames_st, session=st.integers(0, 2**32 - 1), seq=st.integers(0, 2**64 - 1))
def test_roundtrip(frames, session, seq) -> None:
    b = decode_batch(encode_batch("esx-01", session, seq, frames))
    assert (b.src, b.session, b.first_seq, b.frames) == ("esx-01", session, seq, frames)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_garbage_raises_only_batch_error(data) -> None:
    try:
        decode_batch(data)
    except BatchError:
        pass


@settings(max_examples=150, deadline=None)
@given(frames=frames_st.filter(bool), cut=st.integers(1, 10_000))
def test_every_truncation_is_refused(frames, cut) -> None:
    good = encode_batch("h", 1, 0, frames)
    with pytest.raises(BatchError):
        decode_batch(good[: max(0, len(good) - cut)])


def test_malformed_batches_name_the_problem_and_offset() -> None:
    good = encode_batch("h1", 7, 0, [(10, FRAME)])
    assert issubclass(BatchError, TransportError)
    with pytest.raises(BatchError, match="magic"):
        decode_batch(b"XX" + good[2:])
    with pytest.raises(BatchError, match="version 9"):
        decode_batch(good[:2] + b"\x09" + good[3:])
    with pytest.raises(BatchError, match="trailing"):
        decode_batch(good + b"\0")
    rec = HEADER.size + 2  # after the 2-byte source name
    with pytest.raises(BatchError, match=f"offset {rec}: VLAN 4096"):
        decode_batch(good[:rec] + struct.pack(">H", 4096) + good[rec + 2 :])
    with pytest.raises(BatchError, match=f"offset {rec}: length 20000 outside"):
        decode_batch(good[:rec] + struct.pack(">HH", 10, 20000) + good[rec + 4 :])
    with pytest.raises(BatchError, match="60 bytes claimed, 59 left"):
        decode_batch(good[:-1])
    with pytest.raises(BatchError, match="exceeds"):
        decode_batch(bytes(MAX_BATCH_BYTES + 1))
    with pytest.raises(BatchError, match="length 10 outside"):
        encode_batch("h1", 0, 0, [(1, bytes(10))])
    with pytest.raises(BatchError, match=f"length {MAX_FRAME_LEN + 1}"):
        encode_batch("h1", 0, 0, [(1, bytes(MAX_FRAME_LEN + 1))])


class FakeBus:
    """Records publishes (the sender's only use of a bus)."""

    def __init__(self) -> None:
        self.sent: list[BusMessage] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False):
        self.sent.append(BusMessage(topic, payload, qos, retain))


async def test_sender_batches_per_topic_and_receiver_counts_gaps_and_forgeries() -> None:
    t = Topics("lab")
    bus = FakeBus()
    tx = BatchSender(bus, "h1", session=5, max_frames=4)  # type: ignore[arg-type]
    for i in range(10):
        await tx.send(t.unicast("h1", "h2"), 10, FRAME[:-1] + bytes([i]))
    await tx.send(t.flood("h1", 10), 10, FRAME)
    await tx.flush()
    uni = [m for m in bus.sent if m.topic.endswith("/to/h2")]
    assert [len(decode_batch(m.payload).frames) for m in uni] == [4, 4, 2]
    assert all(m.qos == 0 for m in bus.sent) and tx.counters.frames == 11

    rx = BatchReceiver(t.host_of)
    got = [rx.accept(m) for m in [uni[0], uni[2]]]  # the middle batch was lost
    assert [len(g[1]) for g in got if g] == [4, 2]
    assert rx.counters.lost_frames == 4 and rx.counters.lost_by_host == {"h1": 4}
    # h3 publishing under its own topic a batch that claims to come from h1
    forged = BusMessage(t.unicast("h3", "h2"), uni[0].payload)
    assert rx.accept(forged) is None and rx.counters.forged_batches == 1
    assert rx.accept(BusMessage(t.unicast("h1", "h2"), b"HV\x01junk")) is None
    assert rx.counters.bad_batches == 1 and "truncated" in rx.counters.last_error
    assert rx.counters.frames == 6


async def test_frames_cross_the_bus_intact(bus_kit) -> None:
    t = Topics("lab")
    frames = [(vid, FRAME[:-2] + struct.pack(">H", i)) for i, vid in enumerate([1, 2, 4094] * 50)]
    async with bus_kit.make("h1") as h1, bus_kit.make("h2") as h2:
        async with h2.subscribe(t.unicast_to("h2")) as sub:
            tx = BatchSender(h1, "h1", session=1, max_frames=64)
            for vid, f in frames:
                await tx.send(t.unicast("h1", "h2"), vid, f)
            await tx.flush()
            rx = BatchReceiver(t.host_of)
            got: list[tuple[int, bytes]] = []
            while len(got) < len(frames):
                m = await asyncio.wait_for(sub.get(), 5)
                src, fs = rx.accept(m) or ("", [])
                assert src == "h1"
                got.extend(fs)
            assert got == frames
            assert rx.counters.lost_frames == 0 and rx.counters.batches == 3


def test_topics_name_their_host() -> None:
    t = Topics("lab")
    assert t.host_of(t.flood("esx1", 5)) == "esx1"
    assert t.host_of("hvsim/lab/vds/x/config") is None
    assert t.host_of("hvsim/other/host/esx1/presence") is None
    with pytest.raises(TransportError, match="topic level"):
        Topics("a/b")
