"""Typed errors of the storage half. Each names what was wrong and where (file, offset, field)."""


class StorageError(Exception):
    """A user-facing storage error; the CLI prints it without a traceback."""


class VhdFormatError(StorageError):
    """A VHD structure that is corrupt or unsupported; names the field and file offset."""


class ChainError(StorageError):
    """A VHD chain that is broken: missing parent, UUID mismatch, cycle, depth limit."""


class LvmError(StorageError):
    """An LVM operation or metadata problem (no space, unknown LV, corrupt metadata)."""


class SrError(StorageError):
    """A storage-repository object problem (unknown VDI, VDI in use, wrong SR type)."""


class RingProtocolError(StorageError):
    """A split-driver ring protocol violation (hostile index, bad segment, ungranted page)."""
