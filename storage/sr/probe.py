"""What SR, if any, lives in a directory or on a device: `hvsim sr probe` (XenServer's
`xe sr-probe`), read-only: it never recovers, creates or changes anything.

An SR is found three ways:
- an SR directory: `sr.json` names it (its type, uuid and records), or says it was forgotten
  (`hvsim sr forget`; `hvsim sr introduce` brings it back with its records);
- a volume group `VG_XenStorage-<uuid>` on physical volumes (files or block devices, named by
  the directory's `lvm.json`, found in the directory, or given as the path): an `lvm` SR when
  its LVs are `LV-<uuid>`, `lvhd` when they are `VHD-<uuid>` (XenServer's names), as
  `xe sr-probe type=lvm device-config:device=/dev/sdb` finds the SR on a disk;
- VHD files named `<uuid>.vhd` in a directory without `sr.json`: a file SR whose metadata is
  gone; its uuid cannot be known (XenServer's file SRs keep it in the mount path).
"""
from __future__ import annotations

import json
import re
import xml.dom.minidom
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storage.errors import SrError
from storage.lvm.vg import pv_metadata, scan

VG_PREFIX = "VG_XenStorage-"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_VG_RE = re.compile(re.escape(VG_PREFIX) + f"({UUID})")
_LV_RE = re.compile(f"LV-{UUID}")
_VHD_LV_RE = re.compile(f"VHD-{UUID}")
_VHD_FILE_RE = re.compile(f"{UUID}\\.vhd", re.IGNORECASE)


@dataclass
class Found:
    """One SR found by `probe`."""

    state: str                  # "sr" | "forgotten" | "unrecorded" (volumes, no sr.json)
    type: str | None            # file | lvm | lvhd; None when the volumes do not tell
    uuid: str | None            # None: a file SR whose sr.json is gone
    name_label: str = ""
    volumes: int = 0            # VDI records (sr, forgotten) or volumes seen (unrecorded)
    devices: list[str] = field(default_factory=list)   # PVs holding the VG
    vg: str | None = None

    def line(self, where: str) -> str:
        """One line for a person."""
        kind = self.type or "unknown type"
        ident = f"SR {self.uuid}" if self.uuid else "an SR (uuid unknown)"
        if self.state == "sr":
            return (f"{where}: {ident}, type {kind}, name {self.name_label!r}, "
                    f"{self.volumes} VDIs")
        if self.state == "forgotten":
            return (f"{where}: {ident}, type {kind}, forgotten with {self.volumes} VDI records; "
                    f"bring it back with `hvsim sr introduce {where}`")
        on = f" on {', '.join(self.devices)}" if self.devices else ""
        vg = f" (VG {self.vg}{on})" if self.vg else ""
        target = where if Path(where).is_dir() else "DIR"
        return (f"{where}: {ident}, type {kind}{vg}, {self.volumes} volumes, not introduced: "
                f"`hvsim sr introduce {target}{_introduce_args(self)}`")


def _introduce_args(f: Found) -> str:
    args = f" --type {f.type}" if f.type else " --type TYPE"
    if f.devices:
        args += f" --device-config device={','.join(f.devices)}"
    return args


def probe(path: str | Path) -> list[Found]:
    """Every SR at `path` (a directory, a PV file or a block device); [] when none."""
    p = Path(path)
    if not p.exists():
        raise SrError(f"{p}: no such file or directory")
    if not p.is_dir():
        return vgs_on([str(p)])
    meta = p / "sr.json"
    if meta.exists():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            return [Found(state="forgotten" if data.get("forgotten") else "sr",
                          type=data["type"], uuid=data["uuid"],
                          name_label=data.get("name_label", ""),
                          volumes=len(data.get("vdis", {})))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SrError(f"{meta}: unreadable SR metadata: {exc}") from exc
    found = vgs_on(_pv_paths(p))
    vhds = [q for q in p.iterdir() if _VHD_FILE_RE.fullmatch(q.name) and q.is_file()]
    if vhds:
        found.append(Found(state="unrecorded", type="file", uuid=None, volumes=len(vhds)))
    return found


def _pv_paths(d: Path) -> list[str]:
    """The PVs a directory's `lvm.json` names, else every file in it."""
    cfg = d / "lvm.json"
    if cfg.exists():
        try:
            devices = json.loads(cfg.read_text(encoding="utf-8"))["devices"]
            return [str(d / str(x)) for x in devices]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SrError(f"{cfg}: malformed ({exc})") from exc
    return [str(q) for q in sorted(d.iterdir()) if q.is_file() and not q.name.endswith(".vhd")]


def vgs_on(paths: list[str]) -> list[Found]:
    """SR volume groups on the PVs among `paths`."""
    by_vg: dict[str, Found] = {}
    for dev in scan(paths, writable=False):
        try:
            meta, _ = pv_metadata(dev)
        finally:
            dev.io.close()
        if meta is None:
            continue
        m = _VG_RE.fullmatch(meta.name)
        if m is None:
            continue
        f = by_vg.get(meta.name)
        if f is None or f.volumes == 0:
            names = [lv.name for lv in meta.lvs]
            lvm = sum(1 for n in names if _LV_RE.fullmatch(n))
            lvhd = sum(1 for n in names if _VHD_LV_RE.fullmatch(n))
            kind = "lvhd" if lvhd > lvm else "lvm" if lvm else None
            devices = f.devices if f else []
            f = by_vg[meta.name] = Found(state="unrecorded", type=kind, uuid=m.group(1),
                                         volumes=max(lvm, lvhd), devices=devices, vg=meta.name)
        if dev.path not in f.devices:
            f.devices.append(dev.path)
    return list(by_vg.values())


def to_xml(found: list[Found]) -> str:
    """The XML `xe sr-probe` prints: `<SRlist><SR><UUID>..</UUID><Devlist>..</Devlist>`."""
    doc = xml.dom.minidom.Document()
    top = doc.createElement("SRlist")
    doc.appendChild(top)
    for f in found:
        sr = doc.createElement("SR")
        top.appendChild(sr)
        for tag, text in (("UUID", f.uuid or ""), ("Devlist", ",".join(f.devices))):
            el = doc.createElement(tag)
            el.appendChild(doc.createTextNode(text))
            sr.appendChild(el)
    return doc.toprettyxml()


def to_json(found: list[Found]) -> list[dict[str, object]]:
    """Plain records for --json."""
    return [asdict(f) for f in found]
