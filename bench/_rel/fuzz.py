"""Fuzz targets: every parser that takes outside input, with the contract it must keep.

A `Target` pairs a hypothesis strategy (random and structure-aware inputs: valid data mutated
field by field, with checksums fixed up so the mutation reaches the code behind them) with a
check. The check runs the parser; the only allowed outcomes are a correct result (the check then
asserts what "correct" means: round trips, bounds, data readable back) or one of our typed errors
(`netsim.errors.NetsimError` / `storage.errors.StorageError` subclasses) with a one-line message.
Anything else — an `IndexError`, a `struct.error`, a hang, a non-typed exception — is a crash.

`run_target(target, n)` runs one target for `n` inputs and reports what it found (the bench);
tests wrap the same checks with `@given` at a small budget.
"""
from __future__ import annotations

import functools
import random
import struct
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsim.errors import NetsimError
from storage.errors import StorageError

TYPED = (NetsimError, StorageError)
ROOT = Path(__file__).resolve().parents[2]


class ContractBroken(AssertionError):
    """A parser answered with something other than a correct result or our typed error."""


def expect_typed(exc: BaseException, where: str) -> None:
    """Accept `exc` only if it is one of our typed errors with a clear, one-line message."""
    if not isinstance(exc, TYPED):
        raise ContractBroken(f"{where}: untyped {type(exc).__name__}: {exc}") from exc
    msg = str(exc)
    if not msg.strip():
        raise ContractBroken(f"{where}: {type(exc).__name__} with an empty message") from exc
    if "\n" in msg.strip() or "Traceback" in msg:
        raise ContractBroken(f"{where}: {type(exc).__name__} message is not one line: "
                             f"{msg!r}") from exc


def typed(fn: Callable[..., Any], *args: Any, where: str = "", **kw: Any) -> Any:
    """Call `fn`; return its result, or None when it raised one of our typed errors."""
    try:
        return fn(*args, **kw)
    except Exception as exc:  # the contract: only typed errors may escape a parser
        expect_typed(exc, where or getattr(fn, "__qualname__", str(fn)))
        return None


@dataclass
class Target:
    """One parser under fuzz: its inputs and its contract."""

    name: str
    strategy: Callable[[], st.SearchStrategy[Any]]
    check: Callable[[Any], None]
    note: str = ""


@dataclass
class TargetResult:
    """What running a target found."""

    name: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    crashers: list[str] = field(default_factory=list)


# --- helpers -------------------------------------------------------------------------------------

def _mutations(max_size: int = 12) -> st.SearchStrategy[list[tuple[int, bytes]]]:
    """(position 0..1 as a fraction of the region, bytes) pairs."""
    return st.lists(st.tuples(st.integers(0, 1 << 30), st.binary(min_size=1, max_size=8)),
                    max_size=max_size)


def _apply(buf: bytearray, lo: int, hi: int, muts: list[tuple[int, bytes]]) -> None:
    span = max(1, hi - lo)
    for pos, data in muts:
        off = lo + pos % span
        data = data[:max(0, len(buf) - off)]  # overwrite in place, never grow
        buf[off:off + len(data)] = data


# --- frame codec ---------------------------------------------------------------------------------

def _frame_strategy() -> st.SearchStrategy[bytes]:
    tpids = st.sampled_from([b"\x81\x00", b"\x88\xa8", b"\x91\x00", b"\x08\x00", b"\x08\x06"])
    structured = st.builds(
        lambda dst, src, tags, tail, cut: (dst + src + b"".join(tags) + tail)[:cut],
        st.binary(min_size=6, max_size=6), st.binary(min_size=6, max_size=6),
        st.lists(st.tuples(tpids, st.binary(min_size=2, max_size=2)).map(lambda t: t[0] + t[1]),
                 max_size=4),
        st.binary(max_size=1600), st.integers(0, 1700))
    return st.one_of(st.binary(max_size=40), structured)


def check_frame(frame: bytes) -> None:
    """parse/validate answer a FrameView or FrameError; a parsed view is self-consistent and
    tag/untag round-trips."""
    from netsim.wire import frame as fr

    view = typed(fr.parse, frame)
    if view is None:
        assert len(frame) < 14 or frame[12:14] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00")
        return
    assert 14 <= view.header_len <= len(frame), view
    assert view.header_len == 14 + 4 * view.tags
    assert 0 <= view.vid <= 4095 and 0 <= view.pcp <= 7
    typed(fr.validate, frame)
    tagged = fr.push_tag(frame, 7, pcp=3)
    assert fr.parse(tagged).vid == 7 and fr.pop_tag(tagged) == frame
    if view.tags:
        assert fr.parse(fr.set_vid(frame, 99)).vid == 99


def check_switch_ingress(frames: list[bytes]) -> None:
    """A switch port fed arbitrary bytes never raises; every frame is either forwarded or
    counted as a drop."""
    from netsim.clock import ManualClock
    from netsim.dataplane.policy import SecurityPolicy, VlanPolicy
    from netsim.dataplane.port import Pif, Vif
    from netsim.dataplane.switch import PortGroup, StandardSwitch

    sw = StandardSwitch("fz", clock=ManualClock())
    sw.add_port_group(PortGroup("a", vlan=5, security=SecurityPolicy(forged_transmits=False)))
    sw.add_port_group(PortGroup("g", vlan=4095))
    vm = sw.attach(Vif(1, 0, mac="00:16:3e:00:00:01"), "a")
    vg = sw.attach(Vif(2, 0, mac="00:16:3e:00:00:02"), "g")
    up = sw.add_uplink(Pif("eth0"), vlan=VlanPolicy.trunk())
    ports = (vm, vg, up)
    for i, f in enumerate(frames):
        port = ports[i % 3]
        before = [(p.counters.tx_frames, p.counters.dropped) for p in ports]
        if port is up:
            port.receive(f)
        else:
            port.vnic.send(f)
        after = [(p.counters.tx_frames, p.counters.dropped) for p in ports]
        assert after != before, f"frame {f[:20].hex()} vanished without a counter"
        for p in ports:
            p.queue.clear()


# --- VHD -----------------------------------------------------------------------------------------

@functools.cache
def _vhd_samples() -> dict[str, bytes]:
    """Small real images: dynamic with data, differencing child with locators, fixed."""
    from storage.devices.rawio import MemoryIO
    from storage.vhd.image import VhdImage

    rng = random.Random(7)
    out: dict[str, bytes] = {}
    dyn_io = MemoryIO(name="dyn.vhd")
    dyn = VhdImage.create(dyn_io, size=2 << 20, block_size=64 << 10, now=1e9,
                          uuid=uuidlib.UUID(int=1))
    for off in (0, 70_000, 1 << 20, (2 << 20) - 4096):
        dyn.write(off, rng.randbytes(3000))
    out["dynamic"] = bytes(dyn_io.buf)
    kid_io = MemoryIO(name="kid.vhd")
    kid = VhdImage.create(kid_io, disk_type="differencing", parent=dyn, parent_path="/s/dyn.vhd",
                          path="/s/kid.vhd", now=1e9, uuid=uuidlib.UUID(int=2))
    kid.write(512 * 3, rng.randbytes(1024))
    kid.write(600_000, rng.randbytes(700))
    out["differencing"] = bytes(kid_io.buf)
    fx_io = MemoryIO(name="fixed.vhd")
    fx = VhdImage.create(fx_io, size=256 << 10, disk_type="fixed", now=1e9,
                         uuid=uuidlib.UUID(int=3))
    fx.write(1000, b"fixed!" * 50)
    out["fixed"] = bytes(fx_io.buf)
    return out


def _fix_checksums(buf: bytearray) -> None:
    """Recompute the footer (both copies) and dynamic-header checksums after a mutation."""
    from storage.vhd import format as fmt

    def fix(off: int, size: int, at: int) -> None:
        if off < 0 or off + size > len(buf):
            return
        raw = bytes(buf[off:off + size])
        buf[off + at:off + at + 4] = fmt.checksum(raw, at).to_bytes(4, "big")

    fix(0, 512, 64)
    fix(len(buf) - 512, 512, 64)
    if buf[:8] == b"conectix":
        (hoff,) = struct.unpack_from(">Q", buf, 16)
        if hoff < len(buf):
            fix(hoff, 1024, 36)


# regions of our sample images where structure lives: (start, end) with negative = from the end
_VHD_REGIONS = [(0, 512), (512, 1536), (1536, 2048), (2048, 8192), (-512, 0), (0, 1 << 30)]


@st.composite
def _vhd_input(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(_vhd_samples())))
    buf = bytearray(_vhd_samples()[kind])
    for _ in range(draw(st.integers(1, 3))):
        lo, hi = draw(st.sampled_from(_VHD_REGIONS))
        lo = lo % len(buf) if lo < 0 else min(lo, len(buf))
        hi = len(buf) if hi <= 0 or hi > len(buf) else hi
        _apply(buf, lo, hi, draw(_mutations(4)))
    if draw(st.booleans()):
        _fix_checksums(buf)
    cut = draw(st.one_of(st.none(), st.integers(0, len(buf))))
    if cut is not None:
        del buf[cut:]
    return kind, bytes(buf)


def check_vhd_image(inp: tuple[str, bytes]) -> None:
    """Opening a damaged image answers a VhdImage or our error; an image we accept reads in full
    without an untyped error, and stays readable after we write to it."""
    from storage.devices.rawio import MemoryIO
    from storage.vhd.image import VhdImage

    kind, raw = inp
    img = typed(VhdImage.open, MemoryIO(raw, name=f"{kind}.vhd"), read_only=True)
    if img is None:
        return
    size = img.size
    assert size >= 0
    step = max(512, size // 8)
    for off in range(0, min(size, 64 << 20), step):
        n = min(step, size - off)
        data = typed(img.read, off, n, where="read")
        assert data is None or len(data) == n
    typed(img.parent_locators, where="parent_locators")
    typed(img.allocated_ranges, where="allocated_ranges")
    # Writing into an image we accepted must leave an image we accept, reading back the data.
    io = MemoryIO(raw, name=f"{kind}.vhd")
    rw = typed(VhdImage.open, io, where="open rw")
    if rw is None or size < 1024 or size > (64 << 20):
        return
    payload = bytes(range(256)) * 4
    off = (size // 2) // 512 * 512
    try:
        rw.write(off, payload)
    except Exception as exc:
        expect_typed(exc, "write")
        return
    if rw.read(off, 1024) != payload:
        raise ContractBroken("write accepted but not read back")
    rw.close()
    again = typed(VhdImage.open, MemoryIO(bytes(io.buf)), read_only=True, where="reopen")
    if again is None:
        raise ContractBroken(f"{kind}: an image we opened and wrote to no longer opens")
    got = typed(again.read, off, 1024, where="reread")
    assert got is None or got == payload, "written data lost after reopen"


@st.composite
def _vhd_struct_input(draw: st.DrawFn) -> tuple[str, bytes]:
    which = draw(st.sampled_from(["footer", "header", "locator", "bat"]))
    samples = _vhd_samples()
    if which == "footer":
        base = bytearray(samples[draw(st.sampled_from(sorted(samples)))][-512:])
    elif which == "header":
        base = bytearray(samples["differencing"][512:1536])
    elif which == "locator":
        return which, draw(st.binary(max_size=600))
    else:
        return which, draw(st.binary(max_size=64))
    _apply(base, 0, len(base), draw(_mutations(6)))
    if draw(st.booleans()):
        at = 64 if which == "footer" else 36
        from storage.vhd import format as fmt
        base[at:at + 4] = fmt.checksum(bytes(base), at).to_bytes(4, "big")
    return which, bytes(base[:draw(st.integers(0, len(base)))] if draw(st.booleans()) else base)


def check_vhd_structs(inp: tuple[str, bytes]) -> None:
    """Footer/header/locator/BAT codecs answer a value or VhdFormatError; values re-pack."""
    from storage.vhd import format as fmt

    which, raw = inp
    if which == "footer":
        f = typed(fmt.Footer.unpack, raw)
        if f is not None:
            assert fmt.Footer.unpack(f.pack()) == f
    elif which == "header":
        h = typed(fmt.DynamicHeader.unpack, raw)
        if h is not None:
            assert fmt.DynamicHeader.unpack(h.pack()).table_offset == h.table_offset
    elif which == "locator":
        for code in (fmt.PLATFORM_W2KU, fmt.PLATFORM_W2RU, fmt.PLATFORM_MACX, b"XXXX"):
            typed(fmt.decode_locator, code, raw)
        if len(raw) >= 24:
            fmt.ParentLocator.unpack(raw[:24])
    else:
        n = len(raw) // 4
        assert list(fmt.unpack_bat(raw, n)) == [int.from_bytes(raw[i:i + 4], "big")
                                                 for i in range(0, 4 * n, 4)]


# --- LVM -----------------------------------------------------------------------------------------

@functools.cache
def _lvm_text() -> str:
    return (ROOT / "tests/storage/lvm/data/lvm2-2.03.16-vgcfgbackup.txt").read_text()


_LVM_TOKENS = ["{", "}", "[", "]", "=", ",", '"', "#", "\n", "\\", "-1", "0",
               "99999999999999999999",
               "1e400", "3.5", '"x"', "[]", "striped", "snapshot", "stripes", "extent_count",
               "segment_count", "pe_count", "extent_size", "start_extent", "stripe_count",
               "creation_time", "version", "seqno", "id", "\0", "é", "\t"]


@st.composite
def _lvm_input(draw: st.DrawFn) -> str | bytes:
    lines = _lvm_text().split("\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 4))
        i = draw(st.integers(0, len(lines) - 1))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif op == 2:
            words = lines[i].split(" ")
            j = draw(st.integers(0, len(words) - 1))
            words[j] = draw(st.sampled_from(_LVM_TOKENS))
            lines[i] = " ".join(words)
        elif op == 3:
            line = lines[i]
            k = draw(st.integers(0, len(line)))
            lines[i] = line[:k] + draw(st.text(max_size=6)) + line[k:]
        else:
            lines[i] = lines[i].replace(draw(st.sampled_from(["1", "0", "=", '"', "[", "{"])),
                                        draw(st.sampled_from(_LVM_TOKENS)), 1)
    text = "\n".join(lines)
    if draw(st.booleans()):
        text = text[:draw(st.integers(0, len(text)))]
    if draw(st.integers(0, 9)) == 0:
        return text.encode() + draw(st.binary(max_size=8))
    return text


def check_lvm_text(text: str | bytes) -> None:
    """LVM2 text metadata parses into a VG model or LvmError; a parsed VG re-emits to text that
    parses to the same VG."""
    from storage.lvm.textfmt import emit_text, parse_text

    got = typed(parse_text, text, "fuzz.txt")
    if got is None:
        return
    vg, header = got
    again, _ = parse_text(emit_text(vg, header), "re-emitted")
    # LVM2 writes visible LVs before hidden ones, so order may change; nothing else may.
    by_name = sorted(vg.lvs, key=lambda lv: lv.name)
    assert replace(again, lvs=sorted(again.lvs, key=lambda lv: lv.name)) == replace(
        vg, lvs=by_name), "re-emitted metadata parses to a different VG"


@st.composite
def _lvm_disk_input(draw: st.DrawFn) -> tuple[str, bytes]:
    from storage.lvm.ondisk import (
        MDA_MAGIC,
        DiskLocn,
        MdaHeader,
        PvLabel,
        RawLocn,
        lvm_crc,
        pack_label,
        pack_mda_header,
    )

    which = draw(st.sampled_from(["label", "mda"]))
    if which == "label":
        base = bytearray(pack_label(PvLabel(pv_uuid="a" * 32, device_size=8 << 20,
                                            data_areas=[DiskLocn(1 << 20, 0)],
                                            metadata_areas=[DiskLocn(4096, 1 << 20)])))
        _apply(base, 0, 512, draw(_mutations(6)))
        if draw(st.booleans()):
            struct.pack_into("<I", base, 16, lvm_crc(bytes(base[20:512])))
    else:
        base = bytearray(pack_mda_header(MdaHeader(start=4096, size=1 << 20,
                                                   locns=[RawLocn(512, 1000, 1234)])))
        _apply(base, 0, 512, draw(_mutations(6)))
        if draw(st.booleans()):
            base[4:20] = MDA_MAGIC
        if draw(st.booleans()):
            struct.pack_into("<I", base, 0, lvm_crc(bytes(base[4:512])))
    cut = draw(st.one_of(st.none(), st.integers(0, 512)))
    return which, bytes(base if cut is None else base[:cut])


def check_lvm_disk(inp: tuple[str, bytes]) -> None:
    """PV label and metadata-area header codecs answer a value or LvmError; the read plan for
    a parsed header stays inside its area."""
    from storage.lvm.ondisk import circular_read_plan, unpack_label, unpack_mda_header

    which, raw = inp
    if which == "label":
        typed(unpack_label, raw)
        return
    h = typed(unpack_mda_header, raw)
    if h is None:
        return
    for loc in h.locns:
        plan = typed(circular_read_plan, h, loc)
        if plan:
            for off, n in plan:
                assert h.start <= off and off + n <= h.start + h.size and n >= 0


# --- blkif slots ---------------------------------------------------------------------------------

@functools.cache
def _blk_env() -> tuple[Any, ...]:
    from storage.devices.memdisk import MemoryDisk
    from storage.rings.blkback import BlkBack
    from storage.rings.ring import DomainMemory, GrantMapper, GrantTable

    mem = DomainMemory.local(16, grant_pages=1)
    grants = GrantTable(mem)
    refs = [grants.grant_access(p, 0, readonly=p % 2 == 1) for p in range(4)]
    grants.grant_access(5, 3, readonly=False)  # granted, but to another domain

    class _Xs:
        domid = 0

    back = BlkBack(MemoryDisk(1 << 20), xs=_Xs(), mapper=GrantMapper(mem, 0),  # type: ignore
                   bind=None, frontend_domid=1, devid=51712)  # type: ignore[arg-type]
    return back, mem, refs


@st.composite
def _blk_input(draw: st.DrawFn) -> bytes:
    from storage.rings import blkif

    if draw(st.booleans()):
        return draw(st.binary(min_size=blkif.SLOT_SIZE, max_size=blkif.SLOT_SIZE))
    op = draw(st.sampled_from([0, 1, 2, 3, 5, 6, 4, 255]))
    nseg = draw(st.integers(0, 13))
    sector = draw(st.one_of(st.integers(0, 2100), st.just(2 ** 64 - 1),
                            st.integers(0, 2 ** 64 - 1)))
    gref = st.one_of(st.integers(8, 14), st.integers(0, 2 ** 32 - 1))
    segs = draw(st.lists(st.tuples(gref, st.integers(0, 9), st.integers(0, 9)),
                         min_size=11, max_size=11))
    flat = [x for s in segs for x in s]
    buf = bytearray(blkif.SLOT_SIZE)
    blkif.REQUEST.pack_into(buf, 0, op, nseg, 0, draw(st.integers(0, 2 ** 64 - 1)), sector, *flat)
    if op == 6 and draw(st.booleans()):
        buf[1] = draw(st.sampled_from([0, 1, 3]))
    return bytes(buf)


def check_blkif_slot(raw: bytes) -> None:
    """The backend answers any 112-byte slot with a response of a defined status, and never
    touches a page it was not granted (pages 4-15 hold a canary)."""
    from storage.rings import blkif

    back, mem, _ = _blk_env()
    canary = b"\xa5" * 4096
    for pfn in range(4, 16):
        mem.page(pfn)[:] = canary
    typed(blkif.unpack_request, raw)
    rsp = back.handle(raw)
    assert rsp.status in (0, -1, -2), rsp
    assert rsp.id == int.from_bytes(raw[8:16], "little")
    for pfn in range(4, 16):
        assert bytes(mem.page(pfn)) == canary, f"backend wrote into ungranted page {pfn}"


# --- topology YAML -------------------------------------------------------------------------------

_TOPO_KEYS = ["name", "seed", "hosts", "type", "pifs", "switches", "networks", "vms", "vifs",
              "network", "vlan", "uplinks", "switch", "mtu", "mac", "ip", "physical", "ports",
              "links", "security", "promiscuous", "forged_transmits", "mac_changes", "shaping",
              "average", "peak", "burst", "teaming", "active", "standby", "policy", "mode",
              "allowed", "native", "mirrors", "routes", "gateway", "via", "queue_size", "domid",
              "eth0", "xenbr0", "lan", "vm1", "xen1", "esx1", "access", "trunk"]
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000),
                    st.integers(-(2 ** 70), 2 ** 70), st.sampled_from(_TOPO_KEYS),
                    st.text(max_size=12), st.floats(allow_nan=True),
                    st.sampled_from(["10.0.0.1/24", "00:16:3e:00:00:01", "1e9", "eth0.5",
                                     "xen", "esxi", "vss", "xen1/eth0", "4095", "0x10"]))
_topo_tree = st.recursive(
    _scalar,
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.sampled_from(_TOPO_KEYS), kids, max_size=5)),
    max_leaves=30)


@functools.cache
def _topo_examples() -> list[str]:
    return [p.read_text() for p in sorted((ROOT / "topologies").glob("*.yaml"))]


@st.composite
def _topo_input(draw: st.DrawFn) -> str:
    mode = draw(st.integers(0, 2))
    if mode == 0:
        tree = draw(st.dictionaries(st.sampled_from(_TOPO_KEYS), _topo_tree, max_size=5))
        return yaml.safe_dump(tree)
    if mode == 1 and _topo_examples():
        lines = draw(st.sampled_from(_topo_examples())).split("\n")
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(lines) - 1))
            op = draw(st.integers(0, 3))
            if op == 0:
                del lines[i]
            elif op == 1:
                head, sep, _ = lines[i].partition(":")
                if sep:
                    lines[i] = head + ": " + yaml.safe_dump(draw(_topo_tree),
                                                            default_flow_style=True).strip()
            elif op == 2:
                lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
            else:
                lines[i] = lines[i] + draw(st.sampled_from(
                    [" &a", " *a", ": [", "\t", " !!python/object:os.system", " {", "'"]))
        return "\n".join(lines)
    return draw(st.text(max_size=200))


def check_topology(text: str) -> None:
    """A topology YAML text validates to a Topology (which graphs) or raises TopologyError with
    a file:line message."""
    from netsim.lab.topology import parse_topology, to_graph

    topo = typed(parse_topology, text, "fuzz.yaml")
    if topo is not None:
        typed(to_graph, topo, where="to_graph")


# --- MQTT data-plane batches ---------------------------------------------------------------------

@st.composite
def _batch_input(draw: st.DrawFn) -> bytes:
    from netsim.vds.transport.batch import encode_batch

    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=80))
    frames = draw(st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=14, max_size=90)),
                           max_size=6))
    raw = bytearray(encode_batch(draw(st.sampled_from(["h1", "xen-2", "é"])),
                                 draw(st.integers(0, 2 ** 32 - 1)),
                                 draw(st.integers(0, 2 ** 64 - 1)), frames))
    _apply(raw, 0, len(raw), draw(_mutations(3)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return bytes(raw if cut is None else raw[:cut]) + draw(st.binary(max_size=3))


def check_batch(raw: bytes) -> None:
    """decode_batch answers a Batch or BatchError; a decoded batch re-encodes to the same bytes;
    the receiver counts what it could not use instead of raising."""
    from netsim.vds.transport.batch import decode_batch, encode_batch
    from netsim.vds.transport.bus import BusMessage
    from netsim.vds.transport.dataplane import BatchReceiver

    b = typed(decode_batch, raw)
    if b is not None:
        assert encode_batch(b.src, b.session, b.first_seq, b.frames)[20:] == raw[20:]
    rx = BatchReceiver(lambda topic: "h1")
    before = (rx.counters.bad_batches, rx.counters.forged_batches, rx.counters.batches)
    rx.accept(BusMessage("hvsim/data/h1", raw))
    assert (rx.counters.bad_batches, rx.counters.forged_batches, rx.counters.batches) != before


# --- registry ------------------------------------------------------------------------------------

TARGETS: list[Target] = [
    Target("frame codec", _frame_strategy, check_frame),
    Target("switch ingress", lambda: st.lists(_frame_strategy(), min_size=1, max_size=8),
           check_switch_ingress),
    Target("VHD structs", _vhd_struct_input, check_vhd_structs),
    Target("VHD image open", _vhd_input, check_vhd_image),
    Target("LVM text metadata", _lvm_input, check_lvm_text),
    Target("LVM label/mda", _lvm_disk_input, check_lvm_disk),
    Target("blkif slots", _blk_input, check_blkif_slot),
    Target("topology YAML", _topo_input, check_topology),
    Target("MQTT batches", _batch_input, check_batch),
]


def target(name: str) -> Target:
    """The target called `name`."""
    for t in TARGETS:
        if t.name == name:
            return t
    raise KeyError(name)


def run_target(t: Target, n: int, *, seed: int = 0) -> TargetResult:
    """Run `t` for `n` inputs (no shrinking beyond hypothesis' default); report the outcome."""
    res = TargetResult(t.name)

    def body(x: Any) -> None:
        res.inputs += 1
        t.check(x)

    test = settings(max_examples=n, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), print_blob=False)(
        given(t.strategy())(body))
    try:
        random.seed(seed)
        test()
    except Exception as exc:  # a crasher: record it, the bench reports it
        res.crashers.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return res


# --- crashers found by these targets, kept as regression inputs ----------------------------------

@dataclass(frozen=True)
class Regression:
    """An input that once broke a parser's contract, and what was wrong."""

    target: str
    input: Any
    found: str


def _lvm_with(old: str, new: str) -> str:
    text = _lvm_text()
    assert old in text
    return text.replace(old, new, 1)


REGRESSIONS: list[Regression] = [
    Regression("LVM text metadata", _lvm_text().encode() + b"\x80",
               "parse_text(bytes) raised UnicodeDecodeError on non-UTF-8 metadata"),
    Regression("topology YAML", "\x1f",
               "a control character gave a two-line YAML error naming '<unicode string>' "
               "instead of file:line"),
    Regression("topology YAML", "name: lab\nhosts:\n  xen1: {type: xen}\n  \x85bad: 1\n",
               "same, for a character on a later line"),
    Regression("LVM text metadata",
               "\n".join(ln for ln in _lvm_text().split("\n")
                         if ln != "\t\t\tcreation_time = 1795555561\t# 2026-11-24 21:26:01 +0000"),
               "an LV with creation_host but no creation_time lost its host when re-emitted"),
]


# --- pcap / pcapng reader and scenario YAML (landed later; appended as their own targets) ------

@functools.cache
def _capture_samples() -> dict[str, bytes]:
    import io

    from netsim.clock import ManualClock
    from netsim.wire.capture import PcapngWriter

    frames = [bytes(range(60)), b"\xff" * 6 + bytes(58), bytes(100)]
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        pcap += struct.pack("<IIII", 1_000_000 + i, 500, len(f), len(f)) + f
    buf = io.BytesIO()
    w = PcapngWriter(buf, clock=ManualClock())
    a, b = w.add_interface("vif1.0"), w.add_interface("eth0")
    for i, f in enumerate(frames):
        w.write(a if i % 2 else b, 10**18 + i, f)
    w.close()
    return {"pcap": pcap, "pcapng": buf.getvalue()}


@st.composite
def _capture_input(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=64))
    raw = bytearray(_capture_samples()[draw(st.sampled_from(["pcap", "pcapng"]))])
    _apply(raw, 0, len(raw), draw(_mutations(4)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return bytes(raw if cut is None else raw[:cut])


def check_capture(raw: bytes) -> None:
    """read_capture yields (ns, frame, iface) records or raises CaptureError; never more frame
    bytes than the file holds, never a negative length."""
    import os
    import tempfile

    from netsim.wire.pcapread import read_capture

    fd, name = tempfile.mkstemp(suffix=".pcap", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                else None)
    try:
        os.write(fd, raw)
        os.close(fd)
        total = 0
        try:
            for ts, frame, iface in read_capture(name):
                assert isinstance(ts, int) and isinstance(frame, bytes)
                assert iface is None or isinstance(iface, str)
                total += len(frame)
                assert total <= len(raw)
        except Exception as exc:
            expect_typed(exc, "read_capture")
    finally:
        os.unlink(name)


_SCENARIO = """name: good
capture: [a.eth0]
duration: 5s
steps:
  - at: 1ms
    send:
      from: a
      count: 3
      rate: 2k/s
      frame: {eth: {src: "00:16:3e:00:00:01"}, vlan: 10, payload: 8}
  - {at: 2s, link: {port: esx1/vmnic0, state: down}}
expect:
  - arrives: {at: b.eth0, match: "ether src 00:16:3e:00:00:01", after: 1ms, within: 10ms}
  - counter: {port: esx1/vmnic0, name: drops.link-down, ge: 0, at: 4s}
"""
_SCEN_KEYS = ["name", "capture", "duration", "steps", "expect", "at", "send", "from", "count",
              "rate", "frame", "eth", "src", "dst", "vlan", "payload", "link", "port", "state",
              "arrives", "match", "after", "within", "counter", "ge", "le", "replay", "pcap",
              "into", "speed", "flush_mac", "port_group", "move_vm", "seed"]
_scen_tree = st.recursive(
    st.one_of(_scalar, st.sampled_from(["1ms", "5s", "-1s", "2k/s", "10x", "0x", "1e9s",
                                        "ether src 00:16:3e:00:00:01", "udp", "(", "down"])),
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.sampled_from(_SCEN_KEYS), kids, max_size=5)),
    max_leaves=30)


@st.composite
def _scenario_input(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return yaml.safe_dump(draw(st.dictionaries(st.sampled_from(_SCEN_KEYS), _scen_tree,
                                                   max_size=6)))
    lines = _SCENARIO.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        head, sep, _ = lines[i].partition(":")
        if sep and draw(st.booleans()):
            lines[i] = head + ": " + yaml.safe_dump(draw(_scen_tree),
                                                    default_flow_style=True).strip()
        elif draw(st.booleans()):
            del lines[i]
        else:
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
    return "\n".join(lines)


def check_scenario(text: str) -> None:
    """A scenario YAML text validates or raises ScenarioError with a file:line message."""
    from netsim.scenario.model import parse_scenario

    typed(parse_scenario, text, "fuzz.yaml", base=Path("/nonexistent-hvsim-base"))


TARGETS += [
    Target("pcap/pcapng reader", _capture_input, check_capture),
    Target("scenario YAML", _scenario_input, check_scenario),
]


# --- filter language, declarative frames, vDS configuration from the broker ---------------------

_FILTER_WORDS = ["ether", "src", "dst", "host", "broadcast", "multicast", "vlan", "untagged",
                 "tagged", "proto", "ethertype", "arp", "ip", "ipv6", "udp", "tcp", "icmp",
                 "port", "len", ">=", "<=", "=", "and", "or", "not", "(", ")", "&&", "||", "!",
                 "10", "0", "4095", "99999999999999999999", "-1", "0x800", "10.0.0.1",
                 "00:16:3e:00:00:01", "ff:ff", "1.2.3.400", "65536", "é", ""]


@st.composite
def _filter_input(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    if draw(st.integers(0, 9)) == 0:  # deep nesting and long chains
        n = draw(st.integers(1, 3000))
        text = draw(st.sampled_from(["(" * n + "udp" + ")" * n, "not " * n + "arp",
                                     " and ".join(["ip"] * n), " or ".join(["vlan 5"] * n)]))
        return text, [bytes(12) + b"\x08\x00" + bytes(46)]
    if draw(st.booleans()):
        text = " ".join(draw(st.lists(st.sampled_from(_FILTER_WORDS), max_size=9)))
    else:
        text = draw(st.text(max_size=40))
    return text, draw(st.lists(_frame_strategy(), max_size=4))


def check_filter(inp: tuple[str, list[bytes]]) -> None:
    """compile_filter answers a Filter or FilterError; a compiled filter answers True/False for
    any bytes, never raises."""
    from netsim.wire.filters import compile_filter

    text, frames = inp
    flt = typed(compile_filter, text)
    if flt is None:
        return
    for f in frames:
        assert flt(f) in (True, False)


_SPEC_KEYS = ["eth", "src", "dst", "type", "vlan", "vid", "pcp", "tags", "ip", "udp", "tcp",
              "icmp", "arp", "payload", "sport", "dport", "ttl", "op", "len", "pad"]
_spec_tree = st.recursive(
    st.one_of(_scalar, st.sampled_from(["00:16:3e:00:00:01", "10.0.0.1", "ff:ff:ff:ff:ff:ff",
                                        "request", "0x0800", "hello"])),
    lambda kids: st.one_of(st.lists(kids, max_size=3),
                           st.dictionaries(st.sampled_from(_SPEC_KEYS), kids, max_size=4)),
    max_leaves=20)


def check_frame_spec(spec: Any) -> None:
    """A declarative frame (scenario `frame:`) builds to a parseable frame or raises our
    FrameError subclass naming the key."""
    from netsim.wire import frame as fr
    from netsim.wire.framespec import build_frame

    if not isinstance(spec, dict):
        spec = {"eth": spec}
    raw = typed(build_frame, spec)
    if raw is not None:
        assert isinstance(raw, bytes) and fr.parse(raw).header_len <= len(raw)


@functools.cache
def _vds_sample() -> bytes:
    from netsim.vds.vdsconfig import DvPortGroup, DvSecurity, DvShaping, DvTeaming, VdsConfig

    return VdsConfig(
        "dvs1", 3, uplinks=("uplink1", "uplink2"),
        portgroups=(DvPortGroup("App", 100, DvSecurity(promiscuous=True),
                                DvShaping(10**6, 2 * 10**6, 4096), None,
                                DvTeaming("failover", ("uplink1",), ("uplink2",))),
                    DvPortGroup("Trunk", 4095)),
        hosts={"esx1": {"uplink1": "vmnic0", "uplink2": "vmnic1"}}).to_json()


@st.composite
def _vds_input(draw: st.DrawFn) -> bytes:
    import json

    mode = draw(st.integers(0, 2))
    if mode == 0:
        doc = json.loads(_vds_sample())
        # replace one value somewhere in the document with a random JSON-able value
        path: list[Any] = []
        node: Any = doc
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                       else list(range(len(node)))))
            path.append(key)
            node = node[key]
        value = draw(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 2**65),
                                            st.text(max_size=8), st.floats()),
                                  lambda k: st.one_of(st.lists(k, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), k,
                                                                      max_size=3)),
                                  max_leaves=8))
        if path:
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = value
        else:
            doc = value
        return json.dumps(doc).encode()
    raw = bytearray(_vds_sample())
    if mode == 1:
        _apply(raw, 0, len(raw), draw(_mutations(3)))
        return bytes(raw)
    return draw(st.binary(max_size=60))


def check_vds_config(raw: bytes) -> None:
    """A vDS configuration message from the broker decodes to a VdsConfig that round-trips, or
    raises our ConfigError/TransportError."""
    from netsim.vds.vdsconfig import VdsConfig

    cfg = typed(VdsConfig.from_json, raw, "hvsim/lab/vds/dvs1/config")
    if cfg is not None:
        assert VdsConfig.from_json(cfg.to_json()) == cfg


TARGETS += [
    Target("filter language", _filter_input, check_filter),
    Target("declarative frames", lambda: _spec_tree, check_frame_spec),
    Target("vDS config (broker)", _vds_input, check_vds_config),
]


def _vds_with_bad_host() -> bytes:
    import json

    doc = json.loads(_vds_sample())
    doc["hosts"]["\n"] = "vmnic0"
    return json.dumps(doc).encode()


REGRESSIONS.append(Regression(
    "vDS config (broker)", _vds_with_bad_host(),
    "a host name with a newline in a vDS config message broke the one-line error"))

_ETH_IP = bytes(12) + b"\x08\x00" + bytes(46)
REGRESSIONS += [
    Regression("filter language", ("(" * 3000 + "udp" + ")" * 3000, [_ETH_IP]),
               "a deeply parenthesised filter raised RecursionError (found by atheris)"),
    Regression("filter language", ("not " * 3000 + "udp", [_ETH_IP]),
               "a long run of `not` raised RecursionError"),
    Regression("filter language", (" and ".join(["udp"] * 3000), [_ETH_IP]),
               "a long `and` chain compiled, then raised RecursionError on every frame matched"),
]
REGRESSIONS += [
    Regression("topology YAML", "[" * 3000 + "]" * 3000,
               "YAML nested 3,000 deep raised RecursionError (topology and scenario loaders)"),
    Regression("topology YAML", "".join("  " * i + "a:\n" for i in range(1500)),
               "a 1,500-level block mapping raised RecursionError"),
    Regression("scenario YAML", "steps: " + "[" * 3000 + "]" * 3000,
               "same, through the scenario loader"),
    Regression("vDS config (broker)", b"[" * 100_000 + b"]" * 100_000,
               "a vDS config message nested 100,000 deep raised RecursionError (so did host "
               "migration/control/status messages)"),
]
