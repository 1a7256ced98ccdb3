"""Ethernet II and 802.1Q/802.1ad headers on raw bytes: parse, validate, tag, untag, retag.

This is a pure codec: bytes in, values or bytes out; no clock, I/O or state. The data plane keeps
frames as `bytes` end to end and calls these helpers (or inlines their arithmetic where a
benchmark showed the call itself matters). Scapy appears only in `to_scapy`/`from_scapy`, the
API edge for users who build or inspect frames as Scapy packets; it is imported lazily so the
data plane never pays for it.

Layout (IEEE 802.3 / 802.1Q):
    dst(6) src(6) [TPID(2) TCI(2)]* ethertype(2) payload
    TCI = PCP(3 bits) DEI(1 bit) VID(12 bits)
A frame here excludes the preamble and the FCS, as in a pcap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from netsim.errors import FrameError

if TYPE_CHECKING:
    from scapy.packet import Packet

TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
#: TPIDs recognised as a VLAN tag when parsing (C-tag and S-tag; 0x9100 is the old pre-802.1ad
#: QinQ value still seen on the wire).
VLAN_TPIDS = frozenset({TPID_8021Q, TPID_8021AD, 0x9100})
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD

MAC_LEN = 6
ETH_HEADER_LEN = 14
TAG_LEN = 4
MIN_FRAME_LEN = ETH_HEADER_LEN  # shorter than a header: a runt
MIN_PADDED_LEN = 60  # 64-byte minimum on the wire minus the 4-byte FCS
DEFAULT_MTU = 1500
MAX_VID = 4095  # 4095 is reserved on the wire; vSphere uses it in config to mean "guest tagging"
BROADCAST = b"\xff" * 6


class FrameView(NamedTuple):
    """The Ethernet header of a frame, as parsed by `parse`.

    `tpid`, `vid`, `pcp` and `dei` describe the outermost tag (all 0 when untagged); `tags` counts
    the stacked tags (2 for QinQ); `ethertype` is the one after the last tag; `header_len` is where
    the payload starts.
    """

    dst: bytes
    src: bytes
    tpid: int
    vid: int
    pcp: int
    dei: int
    ethertype: int
    header_len: int
    tags: int

    @property
    def tagged(self) -> bool:
        """True when the frame carries at least one 802.1Q/802.1ad tag."""
        return self.tags > 0


def parse(frame: bytes | bytearray | memoryview) -> FrameView:
    """Parse the Ethernet header and any stacked VLAN tags.

    Raises `FrameError` for a runt (< 14 bytes) or a frame cut inside a tag.
    """
    n = len(frame)
    if n < ETH_HEADER_LEN:
        raise FrameError(f"runt frame: {n} bytes, an Ethernet header needs {ETH_HEADER_LEN}")
    etype = (frame[12] << 8) | frame[13]
    tpid = vid = pcp = dei = 0
    tags = 0
    off = 12
    while etype in VLAN_TPIDS:
        if n < off + TAG_LEN + 2:
            raise FrameError(
                f"frame cut inside its VLAN tag: {n} bytes, tag {tags + 1} (TPID 0x{etype:04x}) "
                f"at offset {off} needs {off + TAG_LEN + 2}"
            )
        tci = (frame[off + 2] << 8) | frame[off + 3]
        if tags == 0:
            tpid, pcp, dei, vid = etype, tci >> 13, (tci >> 12) & 1, tci & 0x0FFF
        tags += 1
        off += TAG_LEN
        etype = (frame[off] << 8) | frame[off + 1]
    return FrameView(
        bytes(frame[0:6]), bytes(frame[6:12]), tpid, vid, pcp, dei, etype, off + 2, tags
    )


def max_len(mtu: int = DEFAULT_MTU, tags: int = 0) -> int:
    """Largest valid frame (without FCS) for an MTU: header + MTU + 4 bytes per tag."""
    return ETH_HEADER_LEN + mtu + TAG_LEN * tags


def validate(frame: bytes | bytearray | memoryview, *, mtu: int = DEFAULT_MTU) -> FrameView:
    """Parse and check a frame: not a runt, not cut inside a tag, not over MTU + 4 per tag,
    source MAC not multicast. Returns the parsed header or raises `FrameError` saying which."""
    view = parse(frame)
    limit = max_len(mtu, view.tags)
    if len(frame) > limit:
        raise FrameError(
            f"oversize frame: {len(frame)} bytes > {limit} (MTU {mtu}, {view.tags} tag(s))"
        )
    if view.src[0] & 1:
        raise FrameError(f"source MAC {mac_to_str(view.src)} is a multicast address")
    return view


def _check_vid(vid: int, what: str = "VLAN ID") -> None:
    if not isinstance(vid, int) or isinstance(vid, bool) or not 0 <= vid <= MAX_VID:
        raise FrameError(f"{what} {vid!r} out of range 0-{MAX_VID}")


def make_tag(vid: int, *, pcp: int = 0, dei: int = 0, tpid: int = TPID_8021Q) -> bytes:
    """The 4 tag bytes (TPID, TCI) for a VLAN ID and priority."""
    _check_vid(vid)
    if not 0 <= pcp <= 7:
        raise FrameError(f"PCP {pcp!r} out of range 0-7")
    if dei not in (0, 1):
        raise FrameError(f"DEI {dei!r} must be 0 or 1")
    tci = (pcp << 13) | (dei << 12) | vid
    return bytes(((tpid >> 8) & 0xFF, tpid & 0xFF, tci >> 8, tci & 0xFF))


def push_tag(
    frame: bytes, vid: int, *, pcp: int = 0, dei: int = 0, tpid: int = TPID_8021Q
) -> bytes:
    """Insert a tag after the source MAC (outermost position); an existing tag becomes inner."""
    if len(frame) < ETH_HEADER_LEN:
        raise FrameError(f"runt frame: {len(frame)} bytes, cannot tag it")
    return frame[:12] + make_tag(vid, pcp=pcp, dei=dei, tpid=tpid) + frame[12:]


def pop_tag(frame: bytes) -> bytes:
    """Remove the outermost tag. Raises `FrameError` if the frame carries none."""
    view = parse(frame)
    if not view.tags:
        raise FrameError("frame carries no VLAN tag to pop")
    return frame[:12] + frame[16:]


def set_vid(frame: bytes, vid: int) -> bytes:
    """Rewrite the outermost tag's VLAN ID, keeping its TPID, PCP and DEI."""
    _check_vid(vid)
    view = parse(frame)
    if not view.tags:
        raise FrameError("frame carries no VLAN tag whose VID could be set")
    tci = (view.pcp << 13) | (view.dei << 12) | vid
    return frame[:14] + bytes((tci >> 8, tci & 0xFF)) + frame[16:]


def mac_to_bytes(mac: str | bytes) -> bytes:
    """`"00:16:3e:00:00:01"` (or `-`/`.`-separated, or 12 hex digits) → 6 bytes."""
    if isinstance(mac, bytes | bytearray):
        if len(mac) != MAC_LEN:
            raise FrameError(f"MAC address must be 6 bytes, got {len(mac)}")
        return bytes(mac)
    text = str(mac).strip().replace(":", "").replace("-", "").replace(".", "")
    if len(text) != 12:
        raise FrameError(f"bad MAC address {mac!r}: want 6 hex octets like 00:16:3e:00:00:01")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise FrameError(
            f"bad MAC address {mac!r}: want 6 hex octets like 00:16:3e:00:00:01"
        ) from None


def mac_to_str(mac: bytes) -> str:
    """6 bytes → `"00:16:3e:00:00:01"`."""
    return ":".join(f"{b:02x}" for b in mac)


def is_multicast(mac: bytes) -> bool:
    """True for group addresses (multicast and broadcast): the I/G bit of the first octet."""
    return bool(mac[0] & 1)


def ethernet(
    dst: str | bytes,
    src: str | bytes,
    ethertype: int,
    payload: bytes = b"",
    *,
    vid: int | None = None,
    pcp: int = 0,
    pad: bool = True,
) -> bytes:
    """Build a frame from fields; with `vid` it is 802.1Q-tagged. Pads to the 60-byte minimum
    (before tagging, as a sender does) unless `pad` is False."""
    if not 0 <= ethertype <= 0xFFFF:
        raise FrameError(f"ethertype {ethertype!r} out of range 0-0xffff")
    frame = mac_to_bytes(dst) + mac_to_bytes(src) + ethertype.to_bytes(2, "big") + payload
    if pad and len(frame) < MIN_PADDED_LEN:
        frame += bytes(MIN_PADDED_LEN - len(frame))
    if vid is not None:
        frame = push_tag(frame, vid, pcp=pcp)
    return frame


def arp_is_gratuitous(frame: bytes, header_len: int) -> bool:
    """True for an ARP (request or reply) whose sender IP equals its target IP: a gratuitous ARP
    announcing that the sender's MAC now lives here."""
    p = header_len
    if len(frame) < p + 28:
        return False
    return frame[p + 14 : p + 18] == frame[p + 24 : p + 28]


def to_scapy(frame: bytes) -> Packet:
    """A Scapy `Ether` view of a frame, for users who inspect frames with Scapy."""
    from scapy.layers.l2 import Ether

    return Ether(bytes(frame))


def from_scapy(pkt: Packet) -> bytes:
    """The bytes of a Scapy packet, checked to be a well-formed Ethernet frame."""
    try:
        raw = bytes(pkt)
    except Exception as exc:  # Scapy raises many types while building; name what failed
        raise FrameError(f"cannot build Scapy packet {pkt.summary()!r}: {exc}") from exc
    parse(raw)
    return raw
