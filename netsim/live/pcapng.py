"""pcapng blocks the live tools need beyond `netsim.wire.capture`: Enhanced Packet Blocks with a
comment and a custom option, and Interface Statistics Blocks.

Layout from the pcapng spec (draft-ietf-opsawg-pcapng): `opt_comment` is option 1 (UTF-8, shown by
Wireshark as `frame.comment`); a custom UTF-8 option that may be copied is code 2988 and starts
with a 4-byte Private Enterprise Number; the ISB (block type 5) carries `isb_ifrecv` (4) and
`isb_ifdrop` (5) as 64-bit counts.
"""
from __future__ import annotations

import struct

from netsim.wire.capture import interface_description, section_header

__all__ = [
    "CUSTOM_PEN",
    "enhanced_packet",
    "interface_description",
    "interface_statistics",
    "section_header",
]

_EPB = 0x00000006
_ISB = 0x00000005
_OPT_END = 0
_OPT_COMMENT = 1
_OPT_CUSTOM_STR = 2988
_EPB_FLAGS = 2
_ISB_STARTTIME = 2
_ISB_ENDTIME = 3
_ISB_IFRECV = 4
_ISB_IFDROP = 5

#: Private Enterprise Number in hvsim's custom options. 32473 is the number IANA reserves for
#: documentation and examples (RFC 5612): hvsim has no PEN of its own, and a borrowed one would
#: claim another organisation's option space.
CUSTOM_PEN = 32473


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def enhanced_packet(
    if_id: int, ts_ns: int, frame: bytes, *, flags: int | None = None,
    comment: str | None = None, custom: str | None = None,
) -> bytes:
    """One EPB (interface `if_id`, ns timestamp) with optional direction flags (1 in, 2 out),
    `opt_comment` and a custom UTF-8 option under `CUSTOM_PEN`."""
    n = len(frame)
    body = struct.pack("<IIIII", if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, n, n)
    body += frame + b"\0" * (-n % 4)
    opts = b""
    if comment is not None:
        opts += _option(_OPT_COMMENT, comment.encode())
    if custom is not None:
        opts += _option(_OPT_CUSTOM_STR, struct.pack("<I", CUSTOM_PEN) + custom.encode())
    if flags is not None:
        opts += _option(_EPB_FLAGS, struct.pack("<I", flags))
    if opts:
        body += opts + _option(_OPT_END, b"")
    return _block(_EPB, body)


def interface_statistics(
    if_id: int, ts_ns: int, *, received: int, dropped: int, start_ns: int | None = None,
) -> bytes:
    """An ISB for interface `if_id` at `ts_ns`: frames received and dropped by the capture
    (`isb_ifrecv`, `isb_ifdrop`)."""
    body = struct.pack("<III", if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF)
    if start_ns is not None:
        body += _option(_ISB_STARTTIME, struct.pack("<II", start_ns >> 32, start_ns & 0xFFFFFFFF))
        body += _option(_ISB_ENDTIME, struct.pack("<II", ts_ns >> 32, ts_ns & 0xFFFFFFFF))
    body += _option(_ISB_IFRECV, struct.pack("<Q", received))
    body += _option(_ISB_IFDROP, struct.pack("<Q", dropped))
    body += _option(_OPT_END, b"")
    return _block(_ISB, body)
