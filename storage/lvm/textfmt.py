"""LVM2 text metadata: the config-tree syntax, the VG model it describes, and its two layouts.

LVM2 writes the same volume-group description in two layouts: the *file* layout `vgcfgbackup`
and `/etc/lvm/backup` use (tab-indented, size comments, header first) and the *raw* layout stored
in a PV's metadata area (no indentation or comments, header last, NUL-terminated). `parse_text`
reads either; `emit_text` writes either following LVM2's `format_text/export.c` rules, so text
LVM2 wrote parses and re-emits byte-for-byte.

Pure codec: bytes/str in, dataclasses out and back; no I/O, clock or randomness. Timestamps in
comments are rendered in UTC (LVM2 uses the local time zone; run it with TZ=UTC to compare).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Literal

from storage.errors import LvmError

Style = Literal["file", "raw"]
Value = int | float | str | list  # list items are int | float | str

FORMAT_VERSION = 1
MAX_DEPTH = 32  # VG metadata nests 5 deep; anything far deeper is hostile
CONTENTS = "Text Format Volume Group"


class MetadataSyntaxError(LvmError):
    """Text that is not valid LVM2 config syntax; names the source and line."""


# --------------------------------------------------------------------------- config tree syntax

@dataclass
class Extra:
    """An entry we do not model, kept as LVM2 wrote it so that it is written back unchanged.

    `after`: the last modelled key before it in its section (None: first in the section);
    `text`: `key = value` as in the source; `tail`: the spacing and comment after it on its
    line (file layout only); `blank`: a blank line came before it.
    """

    text: str
    # where it was: best effort (a VG is the same whatever the layout of what it keeps)
    after: str | None = field(default=None, compare=False)
    tail: str = field(default="", compare=False)
    blank: bool = field(default=False, compare=False)
    indent: str | None = field(default=None, compare=False)  # file layout: leading whitespace


@dataclass
class EntryInfo:
    """Where an entry came from: its source text, trailing comment and a preceding blank line."""

    text: str
    tail: str
    blank: bool
    indent: str | None = None


@dataclass
class Section:
    """One `name { ... }` block: ordered (key, value-or-Section) entries."""

    name: str
    entries: list[tuple[str, Value | Section]] = field(default_factory=list)
    info: list[EntryInfo | None] = field(default_factory=list)  # parallel to entries

    def extras(self, known: set[str] | frozenset[str]) -> list[Extra]:
        """The entries whose keys are not in `known`, anchored to the known key before them."""
        out: list[Extra] = []
        after: str | None = None
        for i, (k, _) in enumerate(self.entries):
            if k in known:
                after = k
                continue
            inf = self.info[i] if i < len(self.info) else None
            if inf is None:
                continue
            out.append(Extra(inf.text, after, inf.tail, inf.blank, inf.indent))
        return out

    def get(self, key: str, default: object = None) -> object:
        """The first entry named `key`, or `default`."""
        for k, v in self.entries:
            if k == key:
                return v
        return default

    def sections(self) -> list[Section]:
        """Nested sections in order."""
        return [v for _, v in self.entries if isinstance(v, Section)]

    def keys(self) -> list[str]:
        """Entry names in order."""
        return [k for k, _ in self.entries]


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?![A-Za-z0-9_.+\-/@:]))
  | (?P<ident>[A-Za-z0-9_.+\-/@:]+)
  | (?P<punct>[{}\[\]=,])
    """,
    re.VERBOSE,
)


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", r"\1", body)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# A token: (kind, text, line, start offset, end offset).
Token = tuple[str, str, int, int, int]


def _tokenize(text: str, source: str) -> list[Token]:
    """LVM2's lexer (libdm-config.c): a run of digits is a number only when nothing that may
    continue a name follows, so `608dec48-a7f6-...`, `12abc` and `1.2.3` are names."""
    tokens: list[Token] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise MetadataSyntaxError(f"{source}:{line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind == "nl":
            line += 1
        elif kind not in ("ws", "comment"):
            tokens.append((kind, m.group(), line, m.start(), m.end()))
        pos = m.end()
    return tokens


def parse_config(text: str, source: str = "<metadata>") -> Section:
    """Parse LVM2 config syntax into a tree; raise `MetadataSyntaxError` naming the line."""
    text = text.split("\0", 1)[0]
    tokens = _tokenize(text, source)
    pos = 0

    def peek() -> Token:
        return tokens[pos] if pos < len(tokens) else \
            ("eof", "", tokens[-1][2] if tokens else 1, len(text), len(text))

    def info(key_tok: Token, blank: bool) -> EntryInfo:
        """Source text of the entry that ends with the token before `pos`."""
        end = tokens[pos - 1][4]
        eol = text.find("\n", end)
        eol = len(text) if eol < 0 else eol
        bol = text.rfind("\n", 0, key_tok[3]) + 1
        lead = text[bol:key_tok[3]]
        return EntryInfo(text[key_tok[3]:end], text[end:eol].rstrip(" "), blank,
                         lead if not lead.strip(" \t") else None)

    def take(kind: str, value: str | None = None) -> Token:
        nonlocal pos
        tok = peek()
        if tok[0] != kind or (value is not None and tok[1] != value):
            want = value or kind
            found = tok[1] or "end"
            raise MetadataSyntaxError(f"{source}:{tok[2]}: expected {want}, found {found!r}")
        pos += 1
        return tok

    def scalar() -> int | float | str:
        kind, val, line = peek()[:3]
        if kind == "string":
            take("string")
            return _unescape(val[1:-1])
        if kind == "number":
            take("number")
            return float(val) if "." in val else int(val)
        raise MetadataSyntaxError(f"{source}:{line}: expected a value, found {val or 'end'!r}")

    def body(sec: Section, closing: bool, depth: int = 0) -> Section:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise MetadataSyntaxError(f"{source}:{peek()[2]}: sections nested deeper than "
                                      f"{MAX_DEPTH}")
        last_line = tokens[pos - 1][2] if pos else 0
        while True:
            key_tok = peek()
            kind, val, line = key_tok[:3]
            blank = line > last_line + 1
            if kind == "eof":
                if closing:
                    raise MetadataSyntaxError(f"{source}:{line}: section {sec.name!r} not closed")
                return sec
            if kind == "punct" and val == "}":
                if not closing:
                    raise MetadataSyntaxError(f"{source}:{line}: unbalanced '}}'")
                pos += 1
                return sec
            if kind not in ("ident", "number"):
                raise MetadataSyntaxError(f"{source}:{line}: expected a key, found {val!r}")
            pos += 1
            nxt = peek()
            if nxt[:2] == ("punct", "{"):
                pos += 1
                sec.entries.append((val, body(Section(val), True, depth + 1)))
                sec.info.append(info(key_tok, blank))
            elif nxt[:2] == ("punct", "="):
                pos += 1
                if peek()[:2] == ("punct", "["):
                    pos += 1
                    items: list = []
                    while peek()[:2] != ("punct", "]"):
                        items.append(scalar())
                        if peek()[:2] == ("punct", ","):
                            pos += 1
                        elif peek()[:2] != ("punct", "]"):
                            raise MetadataSyntaxError(
                                f"{source}:{peek()[2]}: expected ',' or ']' in list {val!r}")
                    pos += 1
                    sec.entries.append((val, items))
                else:
                    sec.entries.append((val, scalar()))
                sec.info.append(info(key_tok, blank))
            else:
                raise MetadataSyntaxError(f"{source}:{nxt[2]}: expected '=' or '{{' after {val!r}")
            last_line = tokens[pos - 1][2]

    return body(Section(""), False)


# --------------------------------------------------------------------------- the VG model

@dataclass
class PhysicalVolume:
    """A PV as the VG metadata records it (`pv0 { ... }`). Sizes in 512-byte sectors."""

    name: str
    id: str
    device: str
    dev_size: int
    pe_start: int
    pe_count: int
    status: list[str] = field(default_factory=lambda: ["ALLOCATABLE"])
    flags: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    device_id_type: str = ""  # LVM2 2.03 with a devices file: how the device is identified
    device_id: str = ""
    extras: list[Extra] = field(default_factory=list)  # ba_start, future keys: as written


@dataclass
class Segment:
    """A run of an LV's logical extents mapped by one segment type (striped or snapshot)."""

    start_extent: int
    extent_count: int
    type: str = "striped"
    stripes: list[tuple[str, int]] = field(default_factory=list)  # (pv name, first PE)
    stripe_size: int = 0  # sectors, only when more than one stripe
    chunk_size: int = 0  # snapshot: sectors
    origin: str = ""
    cow_store: str = ""
    merging: bool = False
    tags: list[str] = field(default_factory=list)
    # thin-pool: metadata/data LVs; thin: its pool; both: transaction_id (chunk_size above)
    metadata: str = ""
    pool: str = ""
    transaction_id: int = 0
    discards: str = "passdown"
    zero_new_blocks: bool = True
    thin_pool: str = ""
    device_id: int = 0
    extras: list[Extra] = field(default_factory=list)

    @property
    def end_extent(self) -> int:
        """First logical extent after this segment."""
        return self.start_extent + self.extent_count


@dataclass
class LogicalVolume:
    """An LV's metadata: identity, flags and its segment list."""

    name: str
    id: str
    status: list[str] = field(default_factory=lambda: ["READ", "WRITE", "VISIBLE"])
    flags: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    creation_time: int = 0
    creation_host: str = ""
    allocation_policy: str = ""
    read_ahead: int | None = None
    segments: list[Segment] = field(default_factory=list)
    extras: list[Extra] = field(default_factory=list)  # lock_args, major/minor... as written

    @property
    def extent_count(self) -> int:
        """Logical extents mapped."""
        return sum(s.extent_count for s in self.segments)


@dataclass
class VgMetadata:
    """One volume group's metadata: the `VG { ... }` block."""

    name: str
    id: str
    seqno: int
    extent_size: int  # sectors
    pvs: list[PhysicalVolume] = field(default_factory=list)
    lvs: list[LogicalVolume] = field(default_factory=list)
    format: str | None = "lvm2"
    status: list[str] = field(default_factory=lambda: ["RESIZEABLE", "READ", "WRITE"])
    flags: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    system_id: str = ""
    lock_type: str = ""
    lock_args: str = ""
    max_lv: int = 0
    max_pv: int = 0
    allocation_policy: str = ""
    profile: str = ""
    metadata_copies: int = 0
    extras: list[Extra] = field(default_factory=list)
    pv_list_extras: list[Extra] = field(default_factory=list)  # odd entries beside the PVs
    lv_list_extras: list[Extra] = field(default_factory=list)  # and beside the LVs

    def pv(self, name: str) -> PhysicalVolume:
        """The PV named `pvN`, or LvmError."""
        for p in self.pvs:
            if p.name == name:
                return p
        raise LvmError(f"VG {self.name}: no physical volume {name!r} in metadata")

    def lv(self, name: str) -> LogicalVolume:
        """The LV named `name`, or LvmError."""
        for lv in self.lvs:
            if lv.name == name:
                return lv
        raise LvmError(f"VG {self.name}: no logical volume {name!r}")

    def lv_visible(self, lv: LogicalVolume) -> bool:
        """Visible to users: the VISIBLE flag, or the COW store of a snapshot (as LVM2 decides)."""
        if "VISIBLE" in lv.status:
            return True
        return any(seg.type == "snapshot" and seg.cow_store == lv.name
                   for other in self.lvs for seg in other.segments)

    def has_lv(self, name: str) -> bool:
        """Whether an LV of that name exists."""
        return any(lv.name == name for lv in self.lvs)


@dataclass
class TextHeader:
    """The descriptive fields around the VG block (who wrote it, when, why)."""

    description: str = ""
    creation_host: str = ""
    host_info: str = ""  # the `uname` comment after creation_host
    creation_time: int = 0
    generator: str = "LVM2 version 2.03.16(2) (2022-05-18)"
    system_id: str = ""


# --------------------------------------------------------------------------- tree -> model

def _req(sec: Section, key: str, typ: type, where: str) -> object:
    val = sec.get(key)
    if val is None:
        raise LvmError(f"{where}: missing field {key!r}")
    if (typ is int and isinstance(val, int)) or (typ is str and isinstance(val, str)):
        return val
    if typ is list and isinstance(val, list):
        return val
    raise LvmError(f"{where}: field {key!r} has the wrong type ({type(val).__name__})")


def _opt(sec: Section, key: str, typ: type, default: object, where: str) -> object:
    if sec.get(key) is None:
        return default
    return _req(sec, key, typ, where)


_KNOWN_SEG_TYPES = ("striped", "snapshot", "thin-pool", "thin")
_SEG_KEYS = {
    "striped": {"stripe_count", "stripe_size", "stripes"},
    "snapshot": {"chunk_size", "origin", "cow_store", "merging_store"},
    "thin-pool": {"metadata", "pool", "transaction_id", "chunk_size", "discards",
                  "zero_new_blocks"},
    "thin": {"thin_pool", "transaction_id", "device_id", "origin"},
}
_SEG_COMMON = {"start_extent", "extent_count", "type", "tags"}
_VG_KEYS = frozenset({"id", "seqno", "format", "status", "flags", "tags", "system_id",
                      "lock_type", "lock_args", "extent_size", "max_lv", "max_pv",
                      "allocation_policy", "profile", "metadata_copies", "physical_volumes",
                      "logical_volumes"})
_PV_KEYS = frozenset({"id", "device", "device_id_type", "device_id", "status", "flags", "tags",
                      "dev_size", "pe_start", "pe_count"})
_LV_KEYS = frozenset({"id", "status", "flags", "tags", "creation_time", "creation_host",
                      "allocation_policy", "read_ahead", "segment_count"})


def _segment(sec: Section, where: str) -> Segment:
    w = f"{where}.{sec.name}"
    seg_type = str(_req(sec, "type", str, w))
    seg = Segment(
        start_extent=int(_req(sec, "start_extent", int, w)),
        extent_count=int(_req(sec, "extent_count", int, w)),
        type=seg_type,
        tags=list(_opt(sec, "tags", list, [], w)),
    )
    if seg.extent_count <= 0 or seg.start_extent < 0:
        raise LvmError(f"{w}: start_extent/extent_count out of range")
    if seg_type == "striped":
        count = int(_req(sec, "stripe_count", int, w))
        if count < 1 or seg.extent_count % count:
            raise LvmError(f"{w}: stripe_count {count} does not divide extent_count "
                           f"{seg.extent_count}")
        flat = list(_req(sec, "stripes", list, w))
        if len(flat) != 2 * count:
            raise LvmError(f"{w}: stripes lists {len(flat) // 2} areas, stripe_count says {count}")
        for i in range(0, len(flat), 2):
            if not isinstance(flat[i], str) or not isinstance(flat[i + 1], int):
                raise LvmError(f"{w}: stripes entry {i // 2} is not (\"pvN\", extent)")
            seg.stripes.append((flat[i], flat[i + 1]))
        seg.stripe_size = int(_opt(sec, "stripe_size", int, 0, w))
        if count > 1 and (seg.stripe_size <= 0 or seg.stripe_size & (seg.stripe_size - 1)):
            raise LvmError(f"{w}: stripe_size {seg.stripe_size} is not a power of two")
    elif seg_type == "snapshot":
        seg.chunk_size = int(_req(sec, "chunk_size", int, w))
        if seg.chunk_size < 8 or seg.chunk_size & (seg.chunk_size - 1):
            raise LvmError(f"{w}: chunk_size {seg.chunk_size} is not a power of two ≥ 8")
        seg.origin = str(_req(sec, "origin", str, w))
        if sec.get("merging_store") is not None:
            seg.cow_store = str(_req(sec, "merging_store", str, w))
            seg.merging = True
        else:
            seg.cow_store = str(_req(sec, "cow_store", str, w))
    elif seg_type == "thin-pool":
        seg.metadata = str(_req(sec, "metadata", str, w))
        seg.pool = str(_req(sec, "pool", str, w))
        seg.transaction_id = int(_req(sec, "transaction_id", int, w))
        seg.chunk_size = int(_req(sec, "chunk_size", int, w))
        if not 128 <= seg.chunk_size <= 2097152 or seg.chunk_size % 128:
            raise LvmError(f"{w}: thin pool chunk_size {seg.chunk_size} must be a multiple of "
                           "128 sectors (64 KiB) up to 1 GiB")
        seg.discards = str(_opt(sec, "discards", str, "ignore", w))
        seg.zero_new_blocks = bool(_opt(sec, "zero_new_blocks", int, 0, w))
        if any(isinstance(v, Section) for _, v in sec.entries):
            raise LvmError(f"{w}: pending thin pool messages are not supported")
    elif seg_type == "thin":
        seg.thin_pool = str(_req(sec, "thin_pool", str, w))
        seg.transaction_id = int(_req(sec, "transaction_id", int, w))
        seg.origin = str(_opt(sec, "origin", str, "", w))
        seg.device_id = int(_req(sec, "device_id", int, w))
        if not 0 <= seg.device_id < 1 << 24:
            raise LvmError(f"{w}: device_id {seg.device_id} out of range")
        for unsupported in ("merge", "external_origin"):
            if sec.get(unsupported) is not None:
                raise LvmError(f"{w}: thin {unsupported} is not supported")
    else:
        raise LvmError(f"{w}: segment type {seg_type!r} is not supported (only {_KNOWN_SEG_TYPES})")
    seg.extras = sec.extras(_SEG_COMMON | _SEG_KEYS[seg_type])
    return seg


def vg_from_section(sec: Section, where: str = "<metadata>") -> VgMetadata:
    """Build the VG model from a parsed `VG { ... }` section."""
    w = f"{where}: VG {sec.name}"
    vg = VgMetadata(
        name=sec.name,
        id=str(_req(sec, "id", str, w)),
        seqno=int(_req(sec, "seqno", int, w)),
        extent_size=int(_req(sec, "extent_size", int, w)),
        format=_opt(sec, "format", str, None, w),  # type: ignore[arg-type]
        status=list(_req(sec, "status", list, w)),
        flags=list(_opt(sec, "flags", list, [], w)),
        tags=list(_opt(sec, "tags", list, [], w)),
        system_id=str(_opt(sec, "system_id", str, "", w)),
        lock_type=str(_opt(sec, "lock_type", str, "", w)),
        lock_args=str(_opt(sec, "lock_args", str, "", w)),
        max_lv=int(_opt(sec, "max_lv", int, 0, w)),
        max_pv=int(_opt(sec, "max_pv", int, 0, w)),
        allocation_policy=str(_opt(sec, "allocation_policy", str, "", w)),
        profile=str(_opt(sec, "profile", str, "", w)),
        metadata_copies=int(_opt(sec, "metadata_copies", int, 0, w)),
        extras=sec.extras(_VG_KEYS),
    )
    if vg.extent_size <= 0:
        raise LvmError(f"{w}: extent_size must be positive")
    if sec.get("historical_logical_volumes") is not None:
        raise LvmError(f"{w}: historical_logical_volumes are not supported")
    pvs = sec.get("physical_volumes")
    if not isinstance(pvs, Section):
        raise LvmError(f"{w}: missing section 'physical_volumes'")
    vg.pv_list_extras = pvs.extras({k for k, v in pvs.entries if isinstance(v, Section)})
    for p in pvs.sections():
        pw = f"{w}.{p.name}"
        vg.pvs.append(PhysicalVolume(
            name=p.name,
            id=str(_req(p, "id", str, pw)),
            device=str(_opt(p, "device", str, "", pw)),
            status=list(_req(p, "status", list, pw)),
            flags=list(_opt(p, "flags", list, [], pw)),
            tags=list(_opt(p, "tags", list, [], pw)),
            dev_size=int(_req(p, "dev_size", int, pw)),
            pe_start=int(_req(p, "pe_start", int, pw)),
            pe_count=int(_req(p, "pe_count", int, pw)),
            device_id_type=str(_opt(p, "device_id_type", str, "", pw)),
            device_id=str(_opt(p, "device_id", str, "", pw)),
            extras=p.extras(_PV_KEYS),
        ))
    lvs = sec.get("logical_volumes")
    if isinstance(lvs, Section):
        vg.lv_list_extras = lvs.extras({k for k, v in lvs.entries if isinstance(v, Section)})
        for s in lvs.sections():
            lw = f"{w}.{s.name}"
            lv = LogicalVolume(
                name=s.name,
                id=str(_req(s, "id", str, lw)),
                status=list(_req(s, "status", list, lw)),
                flags=list(_opt(s, "flags", list, [], lw)),
                tags=list(_opt(s, "tags", list, [], lw)),
                creation_time=int(_opt(s, "creation_time", int, 0, lw)),
                creation_host=str(_opt(s, "creation_host", str, "", lw)),
                allocation_policy=str(_opt(s, "allocation_policy", str, "", lw)),
                read_ahead=_opt(s, "read_ahead", int, None, lw),  # type: ignore[arg-type]
                extras=s.extras(_LV_KEYS | {f"segment{i}" for i in
                                            range(1, len(s.entries) + 1)}),
            )
            count = int(_req(s, "segment_count", int, lw))
            for i in range(1, count + 1):
                seg_sec = s.get(f"segment{i}")
                if not isinstance(seg_sec, Section):
                    raise LvmError(f"{lw}: segment_count is {count} but segment{i} is missing")
                lv.segments.append(_segment(seg_sec, lw))
            vg.lvs.append(lv)
    return vg


def parse_text(text: str | bytes, source: str = "<metadata>") -> tuple[VgMetadata, TextHeader]:
    """Parse VG metadata text in either layout into the model and its header fields."""
    if isinstance(text, bytes):
        raw = text.split(b"\0", 1)[0]
        try:
            text = raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise MetadataSyntaxError(f"{source}: metadata text is not UTF-8 (byte "
                                      f"0x{raw[exc.start]:02x} at offset {exc.start})") from None
    root = parse_config(text, source)
    vg_secs = root.sections()
    if len(vg_secs) != 1:
        raise LvmError(f"{source}: expected exactly one volume group section, "
                       f"found {len(vg_secs)}")
    if root.get("contents") != CONTENTS:
        raise LvmError(f"{source}: contents is not {CONTENTS!r}")
    if root.get("version") != FORMAT_VERSION:
        raise LvmError(f"{source}: unsupported text format version {root.get('version')!r}")
    header = TextHeader(
        description=str(_opt(root, "description", str, "", source)),
        creation_host=str(_opt(root, "creation_host", str, "", source)),
        creation_time=int(_opt(root, "creation_time", int, 0, source)),  # type: ignore[arg-type]
        system_id=str(_opt(root, "creation_host_system_id", str, "", source)),
    )
    m = re.search(r'^creation_host = "(?:[^"\\]|\\.)*"\t# (.*)$', text, re.MULTILINE)
    if m:
        header.host_info = m.group(1)
    m = re.search(r"^# Generated by (.*): \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d+\n", text,
                  re.MULTILINE)
    if m:
        header.generator = m.group(1)
    return vg_from_section(vg_secs[0], source), header


# --------------------------------------------------------------------------- model -> text

def size_comment(sectors: int) -> str:
    """LVM2's human size comment for a sector count: `# 4 Megabytes`."""
    units = ("Kilobytes", "Megabytes", "Gigabytes", "Terabytes", "Petabytes", "Exabytes")
    d = sectors / 2.0
    i = 0
    while d > 1024.0 and i < len(units) - 1:
        d /= 1024.0
        i += 1
    return "# %g %s" % (d, units[i])  # noqa: UP031 - C's %g is the format LVM2 writes


def ctime_utc(ts: int) -> str:
    """C `ctime()` of a timestamp in UTC, without the newline."""
    return time.asctime(time.gmtime(ts))


def _strlist(items: list[str]) -> str:
    return "[" + ", ".join(f'"{_escape(s)}"' for s in items) + "]"


class _Writer:
    """Collects lines the way LVM2's formatter does: indent, text, optional aligned comment."""

    def __init__(self, style: Style) -> None:
        self.style = style
        self.indent = 0
        self.parts: list[str] = []
        self._sections: list[list[Extra]] = []  # unwritten extras of each open section
        self._due: list[Extra] = []  # extras whose anchor was just written
        self._open: list[str] = []  # lines opening a `{` or `[` value still being written

    def enter(self, extras: list[Extra]) -> None:
        """A section opened: its kept entries go back after the keys they followed."""
        self._sections.append(list(extras))
        self._take(None)

    def leave(self) -> None:
        """Before a section's closing brace: anything not yet written goes last."""
        rest = self._sections.pop()
        self._flush(blank_next=False)
        self._due = rest
        self._flush(blank_next=False)

    def _take(self, key: str | None) -> None:
        if self._sections:
            todo = self._sections[-1]
            self._due += [e for e in todo if e.after == key]
            todo[:] = [e for e in todo if e.after != key]

    def _flush(self, *, blank_next: bool) -> None:
        """Write the due extras; a blank line about to be written goes first if it came first
        in the source (`blank_next`: the caller is writing that blank line)."""
        due, self._due = self._due, []
        for e in due:
            if e.blank:
                self.parts.append("\n")
            if self.style == "raw":
                self.parts.append(e.text + "\n")
            else:
                lead = "\t" * self.indent if e.indent is None else e.indent
                self.parts.append(lead + e.text + e.tail + "\n")
        if due and due[0].blank and blank_next:
            self._skip_nl = True

    _skip_nl = False

    def out(self, text: str, comment: str | None = None) -> None:
        self._flush(blank_next=False)
        self._emit(text, comment)
        if text.endswith(("{", "[")):  # an entry's value opens: what was kept after that
            self._open.append(text)    # entry goes after its closing line
        elif text in ("}", "]"):
            self._take(self._open.pop().split(" ", 1)[0] if self._open else None)
        elif not (self._open and self._open[-1].endswith("[")):  # not an item of a list
            self._take(text.split(" ", 1)[0])

    def _emit(self, text: str, comment: str | None) -> None:
        if self.style == "raw":
            self.parts.append(text + "\n")
            return
        line = "\t" * self.indent + text
        if comment:
            i = (len(text) + 8 * self.indent) // 8 + 1
            tabs = 1
            i += 1
            while i < 6:
                tabs += 1
                i += 1
            line += "\t" * tabs + comment
        self.parts.append(line + "\n")

    def nl(self) -> None:
        self._flush(blank_next=True)
        if self._skip_nl:  # the blank line was written before the extras
            self._skip_nl = False
            return
        self.parts.append("\n")

    def push(self) -> None:
        self.indent = min(self.indent + 1, 5)

    def pop(self) -> None:
        self.indent -= 1


def _header(w: _Writer, h: TextHeader) -> None:
    stamp = ctime_utc(h.creation_time)
    w.out(f"# Generated by {h.generator}: {stamp}\n")
    w.out(f'contents = "{CONTENTS}"')
    w.out(f"version = {FORMAT_VERSION}")
    w.nl()
    w.out(f'description = "{_escape(h.description)}"')
    w.nl()
    w.out(f'creation_host = "{_escape(h.creation_host)}"\t# {h.host_info}')
    if h.system_id:
        w.out(f'creation_host_system_id = "{_escape(h.system_id)}"')
    w.out(f"creation_time = {h.creation_time}\t# {stamp}\n")


def _flags(w: _Writer, status: list[str], flags: list[str]) -> None:
    w.out(f"status = {_strlist(status)}")
    w.out(f"flags = {_strlist(flags)}")


def _segment_text(w: _Writer, vg: VgMetadata, n: int, seg: Segment) -> None:
    w.out(f"segment{n} {{")
    w.push()
    w.enter(seg.extras)
    w.out(f"start_extent = {seg.start_extent}")
    w.out(f"extent_count = {seg.extent_count}", size_comment(seg.extent_count * vg.extent_size))
    w.nl()
    w.out(f'type = "{seg.type}"')
    if seg.tags:
        w.out(f"tags = {_strlist(seg.tags)}")
    if seg.type == "striped":
        count = len(seg.stripes)
        w.out(f"stripe_count = {count}", "# linear" if count == 1 else None)
        if count > 1:
            w.out(f"stripe_size = {seg.stripe_size}", size_comment(seg.stripe_size))
        w.nl()
        w.out("stripes = [")
        w.push()
        for i, (pv, pe) in enumerate(seg.stripes):
            w.out(f'"{pv}", {pe}' + ("" if i == count - 1 else ","))
        w.pop()
        w.out("]")
    elif seg.type == "snapshot":
        w.out(f"chunk_size = {seg.chunk_size}")
        w.out(f'origin = "{seg.origin}"')
        w.out(f'{"merging_store" if seg.merging else "cow_store"} = "{seg.cow_store}"')
    elif seg.type == "thin-pool":
        w.out(f'metadata = "{seg.metadata}"')
        w.out(f'pool = "{seg.pool}"')
        w.out(f"transaction_id = {seg.transaction_id}")
        w.out(f"chunk_size = {seg.chunk_size}", size_comment(seg.chunk_size))
        w.out(f'discards = "{seg.discards}"')
        if seg.zero_new_blocks:
            w.out("zero_new_blocks = 1")
    elif seg.type == "thin":
        w.out(f'thin_pool = "{seg.thin_pool}"')
        w.out(f"transaction_id = {seg.transaction_id}")
        w.out(f"device_id = {seg.device_id}")  # before origin, as LVM2 2.03 writes it
        if seg.origin:
            w.out(f'origin = "{seg.origin}"')
    else:
        raise LvmError(f"segment type {seg.type!r} cannot be written")
    w.leave()
    w.pop()
    w.out("}")


def _lv_text(w: _Writer, vg: VgMetadata, lv: LogicalVolume) -> None:
    w.nl()
    w.out(f"{lv.name} {{")
    w.push()
    w.enter(lv.extras)
    w.out(f'id = "{lv.id}"')
    _flags(w, lv.status, lv.flags)
    if lv.tags:
        w.out(f"tags = {_strlist(lv.tags)}")
    if lv.creation_time:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(lv.creation_time))
        w.out(f"creation_time = {lv.creation_time}", f"# {stamp}")
    if lv.creation_host:  # kept even without a creation_time, so a rewrite loses nothing
        w.out(f'creation_host = "{_escape(lv.creation_host)}"')
    if lv.allocation_policy:
        w.out(f'allocation_policy = "{lv.allocation_policy}"')
    if lv.read_ahead is not None:
        if lv.read_ahead == -1:
            w.out("read_ahead = -1", "# None")
        else:
            w.out(f"read_ahead = {lv.read_ahead}")
    w.out(f"segment_count = {len(lv.segments)}")
    w.nl()
    for n, seg in enumerate(lv.segments, 1):
        _segment_text(w, vg, n, seg)
    w.leave()
    w.pop()
    w.out("}")


def _vg_text(w: _Writer, vg: VgMetadata) -> None:
    w.out(f"{vg.name} {{")
    w.push()
    w.enter(vg.extras)
    w.out(f'id = "{vg.id}"')
    w.out(f"seqno = {vg.seqno}")
    if vg.format is not None:
        w.out(f'format = "{vg.format}"', "# informational")
    _flags(w, vg.status, vg.flags)
    if vg.tags:
        w.out(f"tags = {_strlist(vg.tags)}")
    if vg.system_id:
        w.out(f'system_id = "{_escape(vg.system_id)}"')
    if vg.lock_type:
        w.out(f'lock_type = "{vg.lock_type}"')
    if vg.lock_args:
        w.out(f'lock_args = "{vg.lock_args}"')
    w.out(f"extent_size = {vg.extent_size}", size_comment(vg.extent_size))
    w.out(f"max_lv = {vg.max_lv}")
    w.out(f"max_pv = {vg.max_pv}")
    if vg.allocation_policy:
        w.nl()
        w.out(f'allocation_policy = "{vg.allocation_policy}"')
    if vg.profile:
        w.out(f'profile = "{vg.profile}"')
    w.out(f"metadata_copies = {vg.metadata_copies}")
    w.nl()
    w.out("physical_volumes {")
    w.push()
    w.enter(vg.pv_list_extras)
    for pv in vg.pvs:
        w.nl()
        w.out(f"{pv.name} {{")
        w.push()
        w.enter(pv.extras)
        w.out(f'id = "{pv.id}"')
        w.out(f'device = "{_escape(pv.device)}"', "# Hint only")
        w.nl()
        if pv.device_id_type and pv.device_id:  # where LVM2 2.03's export.c puts them
            w.out(f'device_id_type = "{_escape(pv.device_id_type)}"')
            w.out(f'device_id = "{_escape(pv.device_id)}"')
        _flags(w, pv.status, pv.flags)
        if pv.tags:
            w.out(f"tags = {_strlist(pv.tags)}")
        w.out(f"dev_size = {pv.dev_size}", size_comment(pv.dev_size))
        w.out(f"pe_start = {pv.pe_start}")
        w.out(f"pe_count = {pv.pe_count}", size_comment(vg.extent_size * pv.pe_count))
        w.leave()
        w.pop()
        w.out("}")
    w.leave()
    w.pop()
    w.out("}")
    w.nl()
    if vg.lvs or vg.lv_list_extras:
        w.out("logical_volumes {")
        w.push()
        w.enter(vg.lv_list_extras)
        shown = [vg.lv_visible(v) for v in vg.lvs]
        for lv in [v for v, vis in zip(vg.lvs, shown, strict=True) if vis] + \
                [v for v, vis in zip(vg.lvs, shown, strict=True) if not vis]:
            _lv_text(w, vg, lv)
        w.leave()
        w.pop()
        w.out("}")
    w.nl()
    w.leave()
    w.pop()
    w.out("}")


def emit_text(vg: VgMetadata, header: TextHeader, style: Style = "file") -> str:
    """Render the VG as LVM2 writes it: `file` (vgcfgbackup) or `raw` (metadata area, no NUL)."""
    w = _Writer(style)
    if style == "file":
        _header(w, header)
        _vg_text(w, vg)
    else:
        _vg_text(w, vg)
        _header(w, header)
    return "".join(w.parts)


def detect_style(text: str) -> Style:
    """Which layout a text uses: a file starts with the header comment or fields."""
    return "raw" if re.match(r"[^\s#=]+ \{\n", text) else "file"
