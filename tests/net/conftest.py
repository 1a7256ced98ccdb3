"""Helpers for the network tests: frames by kind, and reading what a port sent."""
from __future__ import annotations

from netsim.dataplane.port import Port
from netsim.wire import frame as fr

A = fr.mac_to_bytes("00:16:3e:00:00:0a")
B = fr.mac_to_bytes("00:16:3e:00:00:0b")
C = fr.mac_to_bytes("00:16:3e:00:00:0c")
BCAST = fr.BROADCAST


def make(dst: bytes, src: bytes, *, vid: int | None = None, pcp: int = 0,
         ethertype: int = 0x0800, size: int = 60) -> bytes:
    """A frame of `size` bytes before tagging; tagged with (vid, pcp) when vid is not None."""
    f = fr.ethernet(dst, src, ethertype, bytes(max(0, size - 14)))
    return fr.push_tag(f, vid, pcp=pcp) if vid is not None else f


def sent(port: Port) -> list[bytes]:
    """Take every frame waiting in a port's output queue."""
    out = []
    while (f := port.queue.get_nowait()) is not None:
        out.append(f)
    return out


def tag_of(f: bytes) -> tuple[int, int] | None:
    """(vid, pcp) of the outer 802.1Q tag, or None if untagged."""
    v = fr.parse(f)
    return (v.vid, v.pcp) if v.tags else None
