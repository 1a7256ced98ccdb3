"""Image locking between processes, byte for byte the way QEMU locks the images it opens.

QEMU (`block/file-posix.c`, `raw_apply_lock_bytes` / `raw_check_lock_bytes`) takes Linux
open-file-description locks (`F_OFD_SETLK`), all of them shared (read) locks on single bytes of
the image file itself:

- byte `RAW_LOCK_PERM_BASE` (100) + i while it *holds* permission i,
- byte `RAW_LOCK_SHARED_BASE` (200) + i while it *does not let others* take permission i,

with i = 0 consistent read, 1 write, 2 write unchanged, 3 resize. After locking its bytes it
tests (`F_OFD_GETLK` with a write lock) whether anybody else holds the opposite byte: someone
at 200+i while it wants permission i gives `Failed to get "write" lock`; someone at 100+i while it
refuses to share i gives `Failed to get shared "write" lock`. A writer (qemu-io, a running VM)
holds 100, 101, 103, 201, 203; a reader (`qemu-img info`) 100, 201, 203; `-U` (force share)
nothing. We take the same bytes, so hvsim and qemu-img/qemu-io refuse each other's conflicting
opens too, and a `qemu-img info -U` works on an image hvsim is writing.

Why OFD locks and not `flock`: OFD locks belong to the open file (not the process, unlike
classic POSIX locks, which one `close()` anywhere in the process would drop), they vanish with
the last descriptor (so a SIGKILLed holder leaves nothing behind), they do not interact with the
`flock` LVM commits use on PV files, and they are what QEMU takes, which makes the two tools
see each other. Their cost: the kernel records no owner pid (`l_pid` is -1, `/proc/locks`
shows -1), so the holder is found the way `fuser` does it: the processes with a descriptor on
the same (st_dev, st_ino) whose `/proc/PID/fdinfo` lists an OFD lock.
"""
from __future__ import annotations

import enum
import fcntl
import os
import struct

from storage.errors import StorageError

RAW_LOCK_PERM_BASE = 100
RAW_LOCK_SHARED_BASE = 200
PERM_NAMES = ("consistent read", "write", "write unchanged", "resize")
PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE = (1 << i for i in range(4))
PERM_ALL = (1 << len(PERM_NAMES)) - 1

F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = "hhqqi4x"  # struct flock on Linux x86-64/aarch64: type, whence, start, len, pid


class ImageLockedError(StorageError):
    """Another process holds the image in a way that conflicts with this open."""


class LockMode(enum.Enum):
    """(permissions taken, permissions shared with others) of one open, as QEMU names them."""

    #: a writer: refuses other writers and resizers (qemu-io, a VM's disk)
    WRITE = (PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE,
             PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
    #: a reader that wants consistent data: refuses writers (`qemu-img info`)
    READ = (PERM_CONSISTENT_READ, PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
    #: a writer that coordinates with its peers itself (QEMU's share-rw=on): LVM PVs, whose
    #: metadata commits are serialised by their own lock and seqno check
    SHARED_WRITE = (PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL)
    #: a reader that tolerates writers coordinating among themselves (LVM's pvs/vgs on PVs)
    SHARED_READ = (PERM_CONSISTENT_READ, PERM_ALL)
    #: no lock at all (`qemu-img -U`, force share): peeks at a footer, scans
    NONE = (0, PERM_ALL)


def _flock(kind: int, start: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, start, 1, 0)


def _held_by_other(fd: int, byte: int) -> bool:
    got = fcntl.fcntl(fd, F_OFD_GETLK, _flock(fcntl.F_WRLCK, byte))
    return struct.unpack(_FLOCK, got)[0] != fcntl.F_UNLCK


def holders(fd: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes with an OFD lock on the file open as `fd`."""
    st = os.fstat(fd)
    out: list[tuple[int, str]] = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for n in fds:
            try:
                other = os.stat(f"/proc/{pid}/fd/{n}")
                if (other.st_dev, other.st_ino) != (st.st_dev, st.st_ino):
                    continue
                with open(f"/proc/{pid}/fdinfo/{n}", encoding="ascii",
                          errors="replace") as f:
                    if "OFDLCK" not in f.read():
                        continue
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
            except OSError:
                continue
            out.append((pid, cmd[:200]))
            break
    return out


def _unlock_all(fd: int) -> None:
    for base in (RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE):
        for i in range(len(PERM_NAMES)):
            fcntl.fcntl(fd, F_OFD_SETLK, _flock(fcntl.F_UNLCK, base + i))


def lock_image(fd: int, name: str, mode: LockMode) -> None:
    """Take `mode`'s lock bytes on `fd`, or raise ImageLockedError naming the file and holder.

    The bytes are locked first and the conflict test comes after, as in QEMU: of two processes
    racing for the same image at least one sees the other, never both succeed."""
    perm, shared = mode.value
    unshared = PERM_ALL & ~shared
    if perm == 0 and unshared == 0:
        return
    try:
        for i in range(len(PERM_NAMES)):
            if perm & (1 << i):
                fcntl.fcntl(fd, F_OFD_SETLK, _flock(fcntl.F_RDLCK, RAW_LOCK_PERM_BASE + i))
            if unshared & (1 << i):
                fcntl.fcntl(fd, F_OFD_SETLK, _flock(fcntl.F_RDLCK, RAW_LOCK_SHARED_BASE + i))
        conflict = None
        for i, pname in enumerate(PERM_NAMES):
            if perm & (1 << i) and _held_by_other(fd, RAW_LOCK_SHARED_BASE + i):
                conflict = f'Failed to get "{pname}" lock'
                break
            if unshared & (1 << i) and _held_by_other(fd, RAW_LOCK_PERM_BASE + i):
                conflict = f'Failed to get shared "{pname}" lock'
                break
    except OSError as exc:  # a file system without OFD locks: open unlocked, as QEMU warns
        if exc.errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP
            return
        raise
    if conflict is None:
        return
    _unlock_all(fd)
    me = os.getpid()
    who = [f"pid {pid} ({cmd})" if pid != me else f"this process (pid {pid}, another open)"
           for pid, cmd in holders(fd)]
    hint = "" if perm & PERM_WRITE else "; read it anyway with --force-share (-U)"
    raise ImageLockedError(f"{name}: {conflict}: in use by {'; '.join(who) or 'another process'}"
                           f"{hint}")
