"""Extent accounting and allocation on a VG model: who owns which physical extent, what is free.

Free space is never stored: it is derived from the LVs' segments every time, so the only way to
double-allocate would be an allocator that returns a used extent — `check_consistency` proves it
does not. Policy (LVM2's "normal", simplified): extend contiguously from the LV's last extent
when that space is free, then the smallest single free area that holds the whole request, then
the largest areas first ("anywhere").

Pure: works on `VgMetadata` only.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from storage.errors import LvmError
from storage.lvm.textfmt import LogicalVolume, Segment, VgMetadata


class InsufficientSpace(LvmError):
    """Not enough free extents for an allocation (callers may roll back instead)."""


@dataclass(frozen=True)
class Area:
    """A run of physical extents on one PV."""

    pv: str
    pe: int
    count: int

    @property
    def end(self) -> int:
        """First PE after the run."""
        return self.pe + self.count


def used_areas(vg: VgMetadata) -> list[tuple[Area, str]]:
    """Every physical area an LV segment maps, with the owning LV's name."""
    out = []
    for lv in vg.lvs:
        for seg in lv.segments:
            if seg.type != "striped":
                continue
            per_stripe = seg.extent_count // max(1, len(seg.stripes))
            for pv, pe in seg.stripes:
                out.append((Area(pv, pe, per_stripe), lv.name))
    return out


def check_consistency(vg: VgMetadata) -> None:
    """Raise LvmError if two LV areas overlap, an area leaves its PV, or segments have gaps;
    or, as LVM2's vg_validate() (lib/metadata/metadata.c), if two PVs or two LVs share an id
    or a name (two LVs with one id would map writes to one of them into the other)."""
    seen: dict[tuple[str, str], str] = {}
    for pv in vg.pvs:
        for key, what in (((("pv-id", pv.id)), f"Duplicate PV id {pv.id} detected for "
                           f"{pv.name} ({pv.device}) in {vg.name}."),
                          (("pv-name", pv.name), f"Duplicate PV name {pv.name} detected in "
                           f"{vg.name}.")):
            if key in seen:
                raise LvmError(f"VG {vg.name}: {what}")
            seen[key] = pv.name
    for lv in vg.lvs:
        for key, what in ((("lv-name", lv.name), f"Duplicate LV name {lv.name} detected in "
                           f"{vg.name}."),
                          (("lv-id", lv.id), f"Duplicate LV id {lv.id} detected for {lv.name} "
                           f"in {vg.name}.")):
            if key in seen:
                raise LvmError(f"VG {vg.name}: {what}")
            seen[key] = lv.name
    by_pv: dict[str, list[tuple[Area, str]]] = {p.name: [] for p in vg.pvs}
    for area, owner in used_areas(vg):
        if area.pv not in by_pv:
            raise LvmError(f"VG {vg.name}: LV {owner} maps unknown PV {area.pv}")
        pv = vg.pv(area.pv)
        if area.pe < 0 or area.end > pv.pe_count or area.count <= 0:
            raise LvmError(f"VG {vg.name}: LV {owner} maps {area.pv} extents {area.pe}..{area.end} "
                           f"outside 0..{pv.pe_count}")
        by_pv[area.pv].append((area, owner))
    for pv_name, areas in by_pv.items():
        areas.sort(key=lambda a: a[0].pe)
        for (a, oa), (b, ob) in itertools.pairwise(areas):
            if b.pe < a.end:
                raise LvmError(f"VG {vg.name}: {pv_name} extents {b.pe}..{min(a.end, b.end)} "
                               f"allocated to both {oa} and {ob}")
    for lv in vg.lvs:
        le = 0
        for seg in lv.segments:
            if seg.start_extent != le:
                raise LvmError(f"VG {vg.name}: LV {lv.name} segment at extent {seg.start_extent}, "
                               f"expected {le}")
            le = seg.end_extent


def free_areas(vg: VgMetadata) -> list[Area]:
    """Free runs on allocatable PVs, in PV order then extent order."""
    used: dict[str, list[Area]] = {}
    for area, _ in used_areas(vg):
        used.setdefault(area.pv, []).append(area)
    out = []
    for pv in vg.pvs:
        if "ALLOCATABLE" not in pv.status:
            continue
        pos = 0
        for a in sorted(used.get(pv.name, []), key=lambda a: a.pe):
            if a.pe > pos:
                out.append(Area(pv.name, pos, a.pe - pos))
            pos = max(pos, a.end)
        if pos < pv.pe_count:
            out.append(Area(pv.name, pos, pv.pe_count - pos))
    return out


def free_extents(vg: VgMetadata) -> int:
    """Total free extents."""
    return sum(a.count for a in free_areas(vg))


def plan_allocation(vg: VgMetadata, count: int, *,
                    after: tuple[str, int] | None = None) -> list[Area]:
    """Choose `count` free extents: contiguous with `after` (pv, next PE) first, then anywhere."""
    if count <= 0:
        raise LvmError("allocation of zero extents")
    free = free_areas(vg)
    total = sum(a.count for a in free)
    if total < count:
        raise InsufficientSpace(f"VG {vg.name}: insufficient free space: {count} extents "
                                f"needed, only {total} available")
    plan: list[Area] = []
    need = count
    if after is not None:
        for a in free:
            if (a.pv, a.pe) == after:
                take = min(a.count, need)
                plan.append(Area(a.pv, a.pe, take))
                need -= take
                free.remove(a)
                if take < a.count:
                    free.append(Area(a.pv, a.pe + take, a.count - take))
                break
    if need:
        fitting = [a for a in free if a.count >= need]
        if fitting:
            best = min(fitting, key=lambda a: a.count)
            plan.append(Area(best.pv, best.pe, need))
            need = 0
        else:
            for a in sorted(free, key=lambda a: -a.count):
                take = min(a.count, need)
                plan.append(Area(a.pv, a.pe, take))
                need -= take
                if not need:
                    break
    return plan


def append_areas(lv: LogicalVolume, plan: list[Area]) -> None:
    """Map `plan` after the LV's last extent, merging with a physically adjacent last segment."""
    for area in plan:
        last = lv.segments[-1] if lv.segments else None
        if (last is not None and last.type == "striped" and len(last.stripes) == 1
                and last.stripes[0][0] == area.pv
                and last.stripes[0][1] + last.extent_count == area.pe):
            last.extent_count += area.count
            continue
        start = last.end_extent if last else 0
        lv.segments.append(Segment(start_extent=start, extent_count=area.count,
                                   stripes=[(area.pv, area.pe)]))


def truncate_extents(lv: LogicalVolume, count: int) -> list[Area]:
    """Cut the LV to its first `count` logical extents; return the physical areas released."""
    released: list[Area] = []
    kept: list[Segment] = []
    for seg in lv.segments:
        if seg.end_extent <= count:
            kept.append(seg)
            continue
        if seg.type != "striped":
            raise LvmError(f"LV {lv.name}: cannot reduce a {seg.type} segment")
        n = len(seg.stripes)
        keep = max(0, count - seg.start_extent)
        if keep % n:
            raise LvmError(f"LV {lv.name}: a {n}-stripe segment shrinks by multiples of {n} "
                           "extents")
        per_old, per_new = seg.extent_count // n, keep // n
        for pv, pe in seg.stripes:
            released.append(Area(pv, pe + per_new, per_old - per_new))
        if keep:
            seg.extent_count = keep
            kept.append(seg)
    lv.segments = kept
    return released


def last_physical_end(lv: LogicalVolume) -> tuple[str, int] | None:
    """(pv, PE after the last mapped extent) of a linear LV, for contiguous extension."""
    if not lv.segments:
        return None
    last = lv.segments[-1]
    if last.type != "striped" or len(last.stripes) != 1:
        return None
    pv, pe = last.stripes[0]
    return pv, pe + last.extent_count


def plan_striped(vg: VgMetadata, count: int, stripes: int) -> list[Area]:
    """`stripes` contiguous areas of count/stripes extents, each on a different PV."""
    if stripes < 2 or count % stripes:
        raise LvmError(f"{count} extents do not split into {stripes} stripes")
    per = count // stripes
    best: dict[str, Area] = {}
    for a in free_areas(vg):
        if a.count >= per and (a.pv not in best or a.count > best[a.pv].count):
            best[a.pv] = a
    if len(best) < stripes:
        raise InsufficientSpace(f"VG {vg.name}: insufficient free space for {stripes} stripes of "
                                f"{per} extents: only {len(best)} PVs have that much "
                                "contiguous space")
    chosen = sorted(best.values(), key=lambda a: -a.count)[:stripes]
    chosen.sort(key=lambda a: [p.name for p in vg.pvs].index(a.pv))
    return [Area(a.pv, a.pe, per) for a in chosen]


def append_striped(lv: LogicalVolume, plan: list[Area], stripe_sectors: int) -> None:
    """Map a striped plan (from `plan_striped`) after the LV's last extent."""
    start = lv.segments[-1].end_extent if lv.segments else 0
    lv.segments.append(Segment(start_extent=start, extent_count=sum(a.count for a in plan),
                               stripes=[(a.pv, a.pe) for a in plan],
                               stripe_size=stripe_sectors))
