"""LVM2 on files: PVs, VGs, linear/striped LVs, COW snapshots and the LVM2 text metadata.

`textfmt` (text metadata codec) and `ondisk` (label and metadata-area headers) are pure codecs;
`alloc` decides extent allocation on the metadata model; `cow` is dm-snapshot's exception store;
`thin` is the thin pool (LVM2's thin-pool/thin metadata, hvsim's own mapping table);
`device` serves LVs as BlockDevice/RawIO; `vg` opens PVs and commits metadata.
"""
from storage.lvm.cow import DEFAULT_CHUNK_SECTORS, CowStore, SnapshotInvalidError
from storage.lvm.device import LogicalVolumeDevice, LvRawIO, SnapshotDevice
from storage.lvm.textfmt import (
    LogicalVolume,
    MetadataSyntaxError,
    PhysicalVolume,
    Segment,
    TextHeader,
    VgMetadata,
    emit_text,
    parse_text,
)
from storage.lvm.thin import ThinDevice, ThinPool, ThinPoolFullError
from storage.lvm.vg import (
    DEFAULT_EXTENT_SECTORS,
    VolumeGroup,
    list_vgs,
    pvcreate,
    read_pv,
    scan,
)

__all__ = [
    "DEFAULT_CHUNK_SECTORS",
    "DEFAULT_EXTENT_SECTORS",
    "CowStore",
    "LogicalVolume",
    "LogicalVolumeDevice",
    "LvRawIO",
    "MetadataSyntaxError",
    "PhysicalVolume",
    "Segment",
    "SnapshotDevice",
    "SnapshotInvalidError",
    "TextHeader",
    "ThinDevice",
    "ThinPool",
    "ThinPoolFullError",
    "VgMetadata",
    "VolumeGroup",
    "emit_text",
    "list_vgs",
    "parse_text",
    "pvcreate",
    "read_pv",
    "scan",
]
