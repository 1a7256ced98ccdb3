"""hvsim's storage half: VHD images and chains, LVM, XenServer SR/VDI/VBD/PBD, blkif rings.

The public API, in one import (`from storage import SR, open_chain, VolumeGroup`). Names are
loaded on first use, so `import storage` stays cheap and lower layers never import this module.
Layers (DESIGN.md section 1; `tests/test_layers.py` enforces them): `devices` < `vhd`, `lvm`,
`rings` < `diskspec`, `sr` < `cli`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # devices
    "BlockDevice": "storage.devices.blockdev",
    "RawIO": "storage.devices.rawio",
    "FileIO": "storage.devices.rawio",
    "MemoryIO": "storage.devices.rawio",
    "MemoryDisk": "storage.devices.memdisk",
    "RawFileDisk": "storage.devices.memdisk",
    "LockMode": "storage.devices.imagelock",
    "ImageLockedError": "storage.devices.imagelock",
    # vhd
    "VhdImage": "storage.vhd.image",
    "open_image": "storage.vhd.chain",
    "open_chain": "storage.vhd.chain",
    "create_image": "storage.vhd.chain",
    "snapshot": "storage.vhd.chain",
    "clone": "storage.vhd.chain",
    "coalesce": "storage.vhd.chain",
    "resize": "storage.vhd.chain",
    "check": "storage.vhd.chain",
    # lvm
    "VolumeGroup": "storage.lvm.vg",
    "pvcreate": "storage.lvm.vg",
    "scan": "storage.lvm.vg",
    "list_vgs": "storage.lvm.vg",
    # disks by spec
    "open_disk": "storage.diskspec",
    # NBD
    "NbdServer": "storage.nbd.server",
    "Export": "storage.nbd.server",
    # storage repositories
    "SR": "storage.sr.sr",
    "VDI": "storage.sr.sr",
    "VBD": "storage.sr.sr",
    "PBD": "storage.sr.sr",
    "register_sr_type": "storage.sr.sr",
    # rings
    "BlkFront": "storage.rings.blkfront",
    "BlkBack": "storage.rings.blkback",
    "XenStore": "storage.rings.xenstore",
    "XenbusState": "storage.rings.xenstore",
    # errors
    "StorageError": "storage.errors",
    "VhdFormatError": "storage.errors",
    "ChainError": "storage.errors",
    "LvmError": "storage.errors",
    "SrError": "storage.errors",
    "RingProtocolError": "storage.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from storage.devices.blockdev import BlockDevice
    from storage.devices.imagelock import ImageLockedError, LockMode
    from storage.devices.memdisk import MemoryDisk, RawFileDisk
    from storage.devices.rawio import FileIO, MemoryIO, RawIO
    from storage.diskspec import open_disk
    from storage.errors import (
        ChainError,
        LvmError,
        RingProtocolError,
        SrError,
        StorageError,
        VhdFormatError,
    )
    from storage.lvm.vg import VolumeGroup, list_vgs, pvcreate, scan
    from storage.nbd.server import Export, NbdServer
    from storage.rings.blkback import BlkBack
    from storage.rings.blkfront import BlkFront
    from storage.rings.xenstore import XenbusState, XenStore
    from storage.sr.sr import PBD, SR, VBD, VDI, register_sr_type
    from storage.vhd.chain import (
        check,
        clone,
        coalesce,
        create_image,
        open_chain,
        open_image,
        resize,
        snapshot,
    )
    from storage.vhd.image import VhdImage
