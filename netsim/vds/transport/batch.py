"""Frame batches: many Ethernet frames in one bus message (pure codec, bytes in / bytes out).

Layout (big-endian), declared once:

    header  magic "HV" | version u8 = 1 | flags u8 = 0 | session u32 | first_seq u64 |
            count u16 | src_len u8 | reserved u8 = 0                          (20 bytes)
    src     the sending host's name, UTF-8, src_len bytes
    record  vid u16 (VLAN 0-4095 the frame travels in) | length u16 | frame   (× count)

`session` changes when the sending host restarts; `first_seq` is the stream position of the
batch's first frame, so a receiver counts the frames a QoS 0 hop lost from the gaps. Anything
malformed — wrong magic or version, truncated header or record, a frame shorter than an Ethernet
header or longer than `MAX_FRAME_LEN`, a count that disagrees with the records, trailing bytes,
more than `MAX_BATCH_BYTES` — raises `BatchError` naming the offset; nothing is half-returned.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from netsim.errors import TransportError

MAGIC = b"HV"
VERSION = 1
HEADER = struct.Struct(">2sBBIQHBB")
RECORD = struct.Struct(">HH")
MIN_FRAME_LEN = 14  # an Ethernet header
MAX_FRAME_LEN = 16384  # jumbo 9000 + tags, with room to spare
MAX_BATCH_FRAMES = 4096
MAX_BATCH_BYTES = 1 << 20
MAX_VID = 4095


class BatchError(TransportError):
    """A frame batch that cannot be decoded; the message names what and at which offset."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch: who sent it, where in its stream it starts, and the (vid, frame) list."""

    src: str
    session: int
    first_seq: int
    frames: list[tuple[int, bytes]]


def encode_batch(
    src: str, session: int, first_seq: int, frames: Sequence[tuple[int, bytes]]
) -> bytes:
    """One message carrying `frames` (each `(vid, frame_bytes)`) from host `src`."""
    name = src.encode()
    if not 0 < len(name) <= 255:
        raise BatchError(f"batch source host name must be 1-255 bytes, got {len(name)}")
    if len(frames) > MAX_BATCH_FRAMES:
        raise BatchError(f"batch of {len(frames)} frames exceeds {MAX_BATCH_FRAMES}")
    parts = [
        HEADER.pack(MAGIC, VERSION, 0, session & 0xFFFFFFFF, first_seq, len(frames), len(name), 0),
        name,
    ]
    pack = RECORD.pack
    for i, (vid, frame) in enumerate(frames):
        n = len(frame)
        if not MIN_FRAME_LEN <= n <= MAX_FRAME_LEN:
            raise BatchError(f"frame {i}: length {n} outside {MIN_FRAME_LEN}..{MAX_FRAME_LEN}")
        if not 0 <= vid <= MAX_VID:
            raise BatchError(f"frame {i}: VLAN {vid} outside 0..{MAX_VID}")
        parts.append(pack(vid, n))
        parts.append(frame)
    out = b"".join(parts)
    if len(out) > MAX_BATCH_BYTES:
        raise BatchError(f"batch of {len(out)} bytes exceeds {MAX_BATCH_BYTES}")
    return out


def decode_batch(data: bytes) -> Batch:
    """The batch in `data`, or BatchError naming the first problem and its offset."""
    size = len(data)
    if size > MAX_BATCH_BYTES:
        raise BatchError(f"batch of {size} bytes exceeds {MAX_BATCH_BYTES}")
    if size < HEADER.size:
        raise BatchError(f"batch truncated: {size} bytes, header needs {HEADER.size}")
    magic, version, _flags, session, first_seq, count, src_len, _r = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise BatchError(f"not a frame batch: magic {magic!r} at offset 0, expected {MAGIC!r}")
    if version != VERSION:
        raise BatchError(f"frame batch version {version} at offset 2 unsupported (want {VERSION})")
    if count > MAX_BATCH_FRAMES:
        raise BatchError(f"batch claims {count} frames (offset 16), more than {MAX_BATCH_FRAMES}")
    off = HEADER.size
    if src_len == 0 or off + src_len > size:
        raise BatchError(f"batch source name of {src_len} bytes at offset {off} is empty or cut")
    try:
        src = bytes(data[off : off + src_len]).decode()
    except UnicodeDecodeError:
        raise BatchError(f"batch source name at offset {off} is not UTF-8") from None
    off += src_len
    frames: list[tuple[int, bytes]] = []
    unpack = RECORD.unpack_from
    rsize = RECORD.size
    for i in range(count):
        if off + rsize > size:
            raise BatchError(f"frame {i} of {count}: record header cut at offset {off}")
        vid, n = unpack(data, off)
        if vid > MAX_VID:
            raise BatchError(f"frame {i} at offset {off}: VLAN {vid} outside 0..{MAX_VID}")
        if not MIN_FRAME_LEN <= n <= MAX_FRAME_LEN:
            raise BatchError(
                f"frame {i} at offset {off}: length {n} outside {MIN_FRAME_LEN}..{MAX_FRAME_LEN}"
            )
        off += rsize
        end = off + n
        if end > size:
            raise BatchError(f"frame {i} at offset {off}: {n} bytes claimed, {size - off} left")
        frames.append((vid, bytes(data[off:end])))
        off = end
    if off != size:
        raise BatchError(f"{size - off} trailing bytes after {count} frames at offset {off}")
    return Batch(src, session, first_seq, frames)
