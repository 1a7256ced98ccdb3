"""VHD chains on files: open a leaf with its parents, snapshot, clone, coalesce, resize, check.

A differencing VHD names its parent by UUID and by locators (relative path first, then absolute
paths). `open_chain` follows them, checks each parent's UUID and refuses mismatches, cycles and
chains deeper than the limit (30, as XenServer enforces). The opened leaf is a `VhdImage` whose
reads resolve per sector through the chain; writes go to the leaf only.

Coalesce merges a child's sectors into its parent and relinks the child's children to that
parent, under a journal file next to the parent, so an interrupted coalesce is finished (never
undone) by the next `coalesce` or `recover` call. The child itself is left in place, still
valid (it now only repeats its parent's data); removing it is the caller's choice (the SR's
garbage collector does).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from storage.devices.imagelock import ImageLockedError, LockMode
from storage.devices.rawio import FileIO, preallocate
from storage.errors import ChainError, StorageError, VhdFormatError
from storage.vhd import format as fmt
from storage.vhd.image import VhdImage

DEFAULT_MAX_DEPTH = 30
PREALLOC_MIN = 1024 * 1024       # smaller extending writes (bitmaps, footers) are not worth it
SPLICE_PIPE = 1024 * 1024        # copy pipe size (the default /proc/sys/fs/pipe-max-size)
JOURNAL_PREFIX = ".hvsim-coalesce-"

Progress = Callable[[int], None]


class VhdFileIO(FileIO):
    """FileIO that can also read into a caller's buffer (saves an allocation per block).

    `durable = False` makes `flush` (and so the image's close) leave written data to the
    kernel's writeback instead of fsyncing it, as `qemu-img convert` leaves its output (its
    default destination cache mode is "unsafe": no flush at all). Only for an image opened
    without barriers, whose writes are crash-ordered but were never power-loss safe."""

    durable = True
    #: preallocate before filling new space in this file / in `copy_to`'s output (each
    #: cleared where that file system has no fallocate)
    prealloc = True
    prealloc_out = True

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data` at `offset`; a large write that extends the file (a new data
        block) is preallocated first (`rawio.preallocate`: ~20% less CPU than filling a
        hole on ext4; a full disk fails before the write). A crash in between leaves the
        file longer by a zero range nothing references, as a crash after the data write
        would."""
        n = len(data)
        if n >= PREALLOC_MIN and self.prealloc and offset + n > os.fstat(self._fd).st_size \
                and not preallocate(self._fd, offset, n):
            self.prealloc = False
        super().pwrite(offset, data)

    def flush(self) -> None:
        """fsync the file, unless `durable` was turned off."""
        if self.durable:
            super().flush()

    def preadinto(self, offset: int, buf: memoryview) -> int:
        """Fill `buf` from `offset`; returns the bytes read."""
        return os.preadv(self._fd, [buf], offset)

    def copy_to(self, offset: int, out_fd: int, out_offset: int, length: int) -> None:
        """Copy `length` bytes at `offset` into `out_fd` inside the kernel, without a trip
        through user space. Holes of the VHD file (a block allocated but never written) stay
        holes (SEEK_DATA).

        Each range is preallocated in the output first (`rawio.preallocate`: filling
        allocated extents costs ~20% less CPU on ext4 than filling holes, and a full disk
        shows before the copy; only ranges about to be written are allocated), then moved
        with splice(2) through a 1 MiB pipe: measured ~25% less CPU than copy_file_range,
        whose in-kernel pipe writes 64 KiB at a time (and which refuses to cross file
        systems). Where splice cannot write the output, pread/pwrite."""
        end = offset + length
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError:              # ENXIO: only a hole is left
                return
            if data >= end:
                return
            hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), end)
            src, dst, left = data, out_offset + (data - offset), hole - data
            if self.prealloc_out and not preallocate(out_fd, dst, left):
                self.prealloc_out = False
            if self._no_splice_src or self._no_splice_dev == os.fstat(out_fd).st_dev:
                self._copy_by_hand(src, out_fd, dst, left)
            else:
                self._splice(src, out_fd, dst, left)
            pos = hole

    _no_splice_dev: int | None = None       # st_dev of a file system splice cannot write
    _no_splice_src = False
    _no_big_pipe = False
    _pipe: tuple[int, int, int] | None = None   # (read end, write end, capacity)

    def _splice(self, src: int, out_fd: int, dst: int, left: int) -> None:
        """Move `left` bytes from `src` to `dst` of `out_fd` through the pipe."""
        if self._pipe is None:
            if self._no_big_pipe:
                self._kernel_copy(src, out_fd, dst, left)
                return
            r, w = os.pipe2(os.O_CLOEXEC)
            try:
                cap = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, SPLICE_PIPE)
            except OSError:
                # EPERM: above /proc/sys/fs/pipe-max-size, or the user's pipes are over
                # pipe-user-pages-soft (then new pipes get 8 KiB: a Python loop per 8 KiB
                # would be slower than the kernel's copy loop)
                os.close(r)
                os.close(w)
                self._no_big_pipe = True
                self._kernel_copy(src, out_fd, dst, left)
                return
            self._pipe = (r, w, cap)
        r, w, cap = self._pipe
        try:
            while left > 0:
                try:
                    k = os.splice(self._fd, w, min(left, cap), offset_src=src)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
                    self._no_splice_src = True      # this file cannot be spliced from
                    self._close_pipe()
                    self._copy_by_hand(src, out_fd, dst, left)
                    return
                if k <= 0:
                    raise StorageError(f"{self.name}: unexpected end of file at {src}")
                moved = 0
                try:
                    while moved < k:
                        moved += os.splice(r, out_fd, k - moved, offset_dst=dst + moved)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
                    # an output splice cannot write: the rest by hand, from the file
                    self._no_splice_dev = os.fstat(out_fd).st_dev
                    self._close_pipe()
                    self._copy_by_hand(src + moved, out_fd, dst + moved, left - moved)
                    return
                src, dst, left = src + k, dst + k, left - k
        except BaseException:
            self._close_pipe()           # never leave bytes in it for the next copy
            raise

    def _kernel_copy(self, src: int, out_fd: int, dst: int, left: int) -> None:
        """copy_file_range `left` bytes (pread/pwrite where it cannot: another file system
        on kernels >= 5.19, or a file system without it)."""
        while left > 0:
            try:
                n = os.copy_file_range(self._fd, out_fd, left, src, dst)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                self._copy_by_hand(src, out_fd, dst, left)
                return
            if n <= 0:
                raise StorageError(f"{self.name}: unexpected end of file at {src}")
            src, dst, left = src + n, dst + n, left - n

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            r, w, _ = self._pipe
            self._pipe = None
            os.close(r)
            os.close(w)

    def close(self) -> None:
        """Close the file (and the copy pipe)."""
        self._close_pipe()
        super().close()

    def _copy_by_hand(self, src: int, out_fd: int, dst: int, left: int) -> None:
        """pread/pwrite `left` bytes from `src` to `dst` of `out_fd`."""
        buf = memoryview(bytearray(min(left, 1 << 20)))
        while left > 0:
            got = self.preadinto(src, buf[:min(left, len(buf))])
            if got <= 0:
                raise StorageError(f"{self.name}: unexpected end of file at {src}")
            view = buf[:got]
            while view:
                w = os.pwrite(out_fd, view, dst)
                view, dst = view[w:], dst + w
            src, left = src + got, left - got


def open_image(path: str | os.PathLike[str], *, read_only: bool = True,
               barriers: bool = False, lock: LockMode | None = None) -> VhdImage:
    """Open one VHD file (no parents attached); `barriers`: fsync between allocation steps.

    `lock`: the image lock (default: exclusive for writing, shared for reading; see
    `storage.devices.imagelock`)."""
    io = VhdFileIO(path, writable=not read_only, lock=lock)
    try:
        return VhdImage.open(io, read_only=read_only, barriers=barriers)
    except BaseException:
        io.close()
        raise


def parent_candidates(child: VhdImage, child_path: str | os.PathLike[str]) -> list[str]:
    """Paths where `child`'s parent may be, in the order we try them (relative first)."""
    base = os.path.dirname(os.path.abspath(child_path))
    order = {fmt.PLATFORM_W2RU: 0, fmt.PLATFORM_W2KU: 1, fmt.PLATFORM_MACX: 2}
    locs = sorted(child.parent_locators(), key=lambda cp: order.get(cp[0], 3))
    out: list[str] = []
    for code, p in locs:
        p = p.replace("\\", "/") if code in (fmt.PLATFORM_W2RU, b"Wi2r") else p
        cand = os.path.normpath(os.path.join(base, p))
        if cand not in out:
            out.append(cand)
    if child.header and child.header.parent_name:
        cand = os.path.join(base, os.path.basename(child.header.parent_name.replace("\\", "/")))
        if cand not in out:
            out.append(cand)
    return out


def peek_uuid(path: str | os.PathLike[str]) -> uuidlib.UUID:
    """The uuid in a VHD's footer (end of file, else the copy at 0), without a full open."""
    with FileIO(path, writable=False, lock=LockMode.NONE) as io:
        size = io.size()
        for off in (size - fmt.FOOTER_SIZE, 0):
            raw = io.pread(max(off, 0), fmt.FOOTER_SIZE)
            if raw[:8] == fmt.FOOTER_COOKIE:
                return fmt.Footer.unpack(raw, source=str(path), offset=off).uuid
    raise VhdFormatError(f"{path}: not a VHD: no 'conectix' footer")


def find_parent(child: VhdImage, child_path: str | os.PathLike[str]) -> str:
    """The path of `child`'s parent whose footer UUID matches; raises ChainError otherwise."""
    want = child.parent_uuid
    tried: list[str] = []
    mismatch: list[str] = []
    for cand in parent_candidates(child, child_path):
        if not os.path.isfile(cand):
            tried.append(cand)
            continue
        try:
            got = peek_uuid(cand)
        except VhdFormatError as exc:
            raise ChainError(f"{child_path}: parent {cand} is not a valid VHD: {exc}") from exc
        if got == want:
            return cand
        mismatch.append(f"{cand} has uuid {got}")
    if mismatch:
        raise ChainError(f"{child_path}: parent UUID mismatch: the child expects {want}, but "
                         + "; ".join(mismatch))
    raise ChainError(f"{child_path}: parent {want} not found (tried: "
                     f"{', '.join(tried) or 'no locators'})")


def chain_paths(path: str | os.PathLike[str], *, max_depth: int = DEFAULT_MAX_DEPTH) -> list[str]:
    """[leaf, parent, ..., base] file paths, validated like `open_chain`."""
    img = open_chain(path, read_only=True, max_depth=max_depth)
    try:
        return [im.name for im in iter_chain(img)]
    finally:
        img.close()


def iter_chain(img: VhdImage) -> Iterator[VhdImage]:
    """The image, its parent, its grandparent, ... down to the base."""
    cur: VhdImage | None = img
    while cur is not None:
        yield cur
        cur = cur.parent


def open_chain(path: str | os.PathLike[str], *, read_only: bool = True,
               max_depth: int = DEFAULT_MAX_DEPTH, barriers: bool = False,
               lock: LockMode | None = None) -> VhdImage:
    """Open a VHD and attach its parents (read-only); returns the leaf as a BlockDevice.

    Every image is locked as QEMU locks a backing chain: the leaf for writing (or reading),
    each parent for consistent reading, so no other process may write a parent under a
    child; `lock=LockMode.NONE` locks nothing (force share, `qemu-img info -U`).

    `barriers`: the leaf fsyncs between the ordered steps of a block allocation, so a power
    loss (not only a process crash) leaves every sector old or new."""
    leaf = open_image(path, read_only=read_only, barriers=barriers, lock=lock)
    try:
        seen_paths = {os.path.realpath(path)}
        seen_uuids = {leaf.uuid}
        cur, cur_path, depth = leaf, str(path), 1
        while cur.parent_uuid is not None:
            if depth >= max_depth:
                raise ChainError(f"{path}: chain deeper than the limit of {max_depth} images "
                                 f"(at {cur_path})")
            ppath = find_parent(cur, cur_path)
            real = os.path.realpath(ppath)
            if real in seen_paths or cur.parent_uuid in seen_uuids:
                raise ChainError(f"{path}: parent cycle: {cur_path} points back at {ppath} "
                                 f"(uuid {cur.parent_uuid}), already in the chain")
            parent = open_image(ppath, read_only=True,
                                lock=LockMode.NONE if lock is LockMode.NONE else None)
            cur.parent = parent
            seen_paths.add(real)
            seen_uuids.add(parent.uuid)
            cur, cur_path, depth = parent, ppath, depth + 1
        return leaf
    except BaseException:
        leaf.close()
        raise


def create_image(path: str | os.PathLike[str], *, size: int | None = None,
                 disk_type: str = "dynamic", block_size: int = fmt.DEFAULT_BLOCK_SIZE,
                 parent_path: str | os.PathLike[str] | None = None,
                 uuid: uuidlib.UUID | None = None, barriers: bool = False) -> VhdImage:
    """Create a VHD file; with `parent_path` a differencing child of that (valid) chain.

    `barriers`: fsync between the creation steps and in later writes through the image."""
    parent = None
    if parent_path is not None:
        parent = open_chain(parent_path, read_only=True)
        if parent.depth + 1 > DEFAULT_MAX_DEPTH:
            parent.close()
            raise ChainError(f"{path}: a child of {parent_path} would make the chain deeper "
                             f"than {DEFAULT_MAX_DEPTH}")
        disk_type = "differencing"
    io = VhdFileIO(path, create=True)
    try:
        return VhdImage.create(io, size=size, disk_type=disk_type, block_size=block_size,
                               parent=parent, parent_path=str(parent_path) if parent_path
                               else None, path=str(path), uuid=uuid, barriers=barriers)
    except BaseException:
        io.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        if parent is not None:
            parent.close()
        raise


def snapshot(path: str | os.PathLike[str], base_path: str | os.PathLike[str], *,
             max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Turn `path` into the read-only parent `base_path` and recreate `path` as its empty child.

    No data is copied: one rename and one small file. `path` keeps its name (the VDI continues
    with the same identity) and reads exactly as before.
    """
    img = open_chain(path, read_only=True, max_depth=max_depth)
    depth = img.depth
    img.close()
    if depth + 1 > max_depth:
        raise ChainError(f"{path}: snapshot would make the chain {depth + 1} deep "
                         f"(limit {max_depth})")
    if os.path.exists(base_path):
        raise StorageError(f"{base_path}: already exists")
    os.rename(path, base_path)
    try:
        create_image(path, parent_path=base_path).close()
    except BaseException:
        os.rename(base_path, path)
        raise


def clone(path: str | os.PathLike[str], base_path: str | os.PathLike[str],
          clone_path: str | os.PathLike[str], *, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Give `clone_path` the contents of `path` in O(1): `path` is snapshotted into the
    read-only `base_path`, and `clone_path` becomes its second (writable) child."""
    if os.path.exists(clone_path):
        raise StorageError(f"{clone_path}: already exists")
    snapshot(path, base_path, max_depth=max_depth)
    create_image(clone_path, parent_path=base_path).close()


def siblings_and_children(image: VhdImage, directories: list[str]) -> tuple[list[str], list[str]]:
    """(children of image's parent other than image, children of image) among VHDs in dirs."""
    siblings: list[str] = []
    children: list[str] = []
    for d in dict.fromkeys(directories):
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            if not entry.name.endswith(".vhd") or not entry.is_file():
                continue
            try:
                other = open_image(entry.path, read_only=True, lock=LockMode.NONE)
            except StorageError:
                continue
            try:
                if other.uuid == image.uuid:
                    continue
                if image.parent_uuid is not None and other.parent_uuid == image.parent_uuid:
                    siblings.append(entry.path)
                if other.parent_uuid == image.uuid:
                    children.append(entry.path)
            finally:
                other.close()
    return siblings, children


@dataclass
class CoalesceResult:
    """What a coalesce did."""

    child: str
    parent: str
    bytes_copied: int = 0
    relinked: list[str] = field(default_factory=list)
    removed_child: bool = False


def _journal_path(parent_path: str) -> str:
    d, name = os.path.split(os.path.abspath(parent_path))
    return os.path.join(d, f"{JOURNAL_PREFIX}{name}.json")


def write_json_atomic(path: str | os.PathLike[str], obj: object) -> None:
    """Write JSON to `path` so that readers see the old or the new file, never a torn one."""
    import json

    path = str(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def coalesce(child_path: str | os.PathLike[str], *, force: bool = False,
             children: list[str] | None = None, siblings: list[str] | None = None,
             progress: Progress | None = None,
             on_total: Callable[[int], None] | None = None,
             barriers: bool = False, remove_child: bool = True) -> CoalesceResult:
    """Merge `child_path`'s data into its parent and relink the child's children to the parent.

    Refused when the parent has other children (their view would change) unless `force`.
    `children`/`siblings` may be given by a caller that knows them (an SR); otherwise the
    directories of the child and the parent are scanned for VHDs naming them as parent.
    The merged child is deleted as the journal's last step (`remove_child`), as XenServer's
    garbage collector does: left behind it would still open and check clean while it no
    longer owns its data (a later write to the parent would change it silently). An SR that
    renames or deletes the child itself passes False.
    """
    child_path = str(child_path)
    child = open_chain(child_path, read_only=True)
    try:
        if child.parent is None:
            raise ChainError(f"{child_path}: not a differencing VHD; nothing to coalesce into")
        parent_path = find_parent(child, child_path)
        if siblings is None or children is None:
            dirs = [os.path.dirname(os.path.abspath(child_path)),
                    os.path.dirname(os.path.abspath(parent_path))]
            found_sib, found_kids = siblings_and_children(child, dirs)
            siblings = found_sib if siblings is None else siblings
            children = found_kids if children is None else children
        if siblings and not force:
            raise ChainError(f"{child_path}: refusing to coalesce: its parent {parent_path} has "
                             f"other children ({', '.join(siblings)}) whose contents would "
                             "change; pass force to do it anyway")
        journal = {"child": os.path.abspath(child_path), "parent": os.path.abspath(parent_path),
                   "children": [os.path.abspath(c) for c in children], "phase": "copy",
                   "remove_child": remove_child,
                   "headers": {os.path.abspath(c): _header_backup(c) for c in children}}
        jpath = _journal_path(parent_path)
        if os.path.exists(jpath):
            raise ChainError(f"{parent_path}: an interrupted coalesce is pending ({jpath}); run "
                             "recovery first")
        write_json_atomic(jpath, journal)
        total = sum(n for _, n in child.allocated_ranges())
        if on_total:
            on_total(total)
    finally:
        child.close()
    return _run_journal(jpath, progress=progress, barriers=barriers)


def _header_backup(path: str | os.PathLike[str]) -> list[int | str]:
    """[offset, hex bytes] of a differencing image's dynamic header, for the journal."""
    img = open_image(path, read_only=True, lock=LockMode.NONE)
    try:
        off = img.footer.data_offset
        return [off, img.io.pread(off, fmt.HEADER_SIZE).hex()]
    finally:
        img.close()


def _restore_header(path: str, backup: list[int | str]) -> None:
    off, raw = int(backup[0]), bytes.fromhex(str(backup[1]))
    with FileIO(path) as io:
        io.pwrite(off, raw)
        io.flush()


def _run_journal(jpath: str, *, progress: Progress | None = None,
                 barriers: bool = False) -> CoalesceResult:
    import json

    with open(jpath, encoding="utf-8") as f:
        journal = json.load(f)
    result = CoalesceResult(child=journal["child"], parent=journal["parent"])
    if journal["phase"] == "copy":
        child = open_image(journal["child"], read_only=True)
        parent = open_chain(journal["parent"], read_only=False, barriers=barriers)
        try:
            if child.size > parent.size:
                parent.resize(child.size)
            result.bytes_copied = child.copy_into(parent, progress=progress)
            if child.size < parent.size:
                parent.resize(child.size)
            parent.flush()
        finally:
            child.close()
            parent.close()
        journal["phase"] = "relink"
        write_json_atomic(jpath, journal)
    if journal["phase"] == "relink":
        parent = open_image(journal["parent"], read_only=True)
        try:
            for kid in journal["children"]:
                if not os.path.exists(kid):
                    continue
                try:
                    img = open_image(kid, read_only=False)
                except VhdFormatError:
                    # A power cut tore the kid's 1 KiB header while it was being relinked:
                    # put back the copy the journal holds, then relink again.
                    backup = journal.get("headers", {}).get(kid)
                    if not backup:
                        raise
                    _restore_header(kid, backup)
                    img = open_image(kid, read_only=False)
                try:
                    img.set_parent(parent, parent_path=journal["parent"], path=kid)
                finally:
                    img.parent = None
                    img.close()
                result.relinked.append(kid)
        finally:
            parent.close()
    if journal.get("remove_child"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal["child"])
        result.removed_child = True
    os.unlink(jpath)
    return result


def pending_journals(directory: str | os.PathLike[str]) -> list[str]:
    """Coalesce journals left in `directory` by an interrupted coalesce."""
    from pathlib import Path

    return sorted(str(p) for p in Path(directory).glob(f"{JOURNAL_PREFIX}*.json"))


def recover(directory: str | os.PathLike[str]) -> list[CoalesceResult]:
    """Finish every interrupted coalesce in `directory`."""
    return [_run_journal(j) for j in pending_journals(directory)]


def resize(path: str | os.PathLike[str], size: int, *, barriers: bool = False) -> int:
    """Resize the leaf at `path` (grow; shrink only when no data is lost); returns the new size."""
    img = open_chain(path, read_only=False, barriers=barriers)
    try:
        return img.resize(size)
    finally:
        img.close()


def refuse_output_in_chain(img: VhdImage, out_path: str | os.PathLike[str]) -> None:
    """Refuse an output file that is one of `img`'s chain (same st_dev and st_ino: hard links,
    symlinks and other spellings of the path included), before anything is written to it."""
    try:
        out = os.stat(out_path)
    except OSError:
        return
    for im in iter_chain(img):
        fileno = getattr(im.io, "fileno", None)
        if fileno is None:
            continue
        st = os.fstat(fileno())
        if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
            what = "the image itself" if im is img else "a parent in its chain"
            raise StorageError(f"{out_path}: refusing to write the output over {what} "
                               f"({im.name}); choose another output file")


def children_beside(img: VhdImage) -> list[str]:
    """Differencing VHDs in `img`'s directory that name it as their parent (loose files:
    there is no SR to ask)."""
    return siblings_and_children(img, [os.path.dirname(os.path.abspath(img.name))])[1]


def export(img: VhdImage, out_path: str | os.PathLike[str], *, progress: Progress | None = None,
           chunk: int = 8 * 1024 * 1024, kernel_copy: bool = True) -> int:
    """Write the chain's whole content to a raw file (holes where it reads zeros).

    Sectors no image of the chain holds become holes; with `kernel_copy` the sectors an image
    holds are copied by the kernel (`os.copy_file_range`), as they are, else zero 64 KiB pieces
    among them become holes too.

    An existing regular file at `out_path` is replaced, unless it is part of the chain being
    read, or another process has it open as an image (locked). Reads go into one reused buffer
    when the container allows it: measured here, allocating a fresh 2 MiB `bytes` per block
    made export 2.3x slower. Each copied range is preallocated first (`VhdFileIO.copy_to`),
    so a full disk fails with "<out_path>: No space left on device" before that range.
    """
    refuse_output_in_chain(img, out_path)
    if os.path.isfile(out_path):
        FileIO(out_path, writable=True).close()   # in use by another process? (image lock)
    try:
        if os.path.isfile(out_path):
            os.unlink(out_path)    # replacing is cheaper than truncating a file of cached pages
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise StorageError(f"{out_path}: cannot write: {exc.strerror}") from exc
    buf: memoryview | None = None           # made on first use: the kernel copy needs none
    zeros = memoryview(b"")
    try:
        size = img.size
        for off in range(0, size, chunk):
            n = min(chunk, size - off)
            pos = off
            for k, io, src in img.map(off, n):
                nbytes = min(k * fmt.SECTOR, off + n - pos)
                if io is not None:
                    readinto = getattr(io, "preadinto", None)
                    copy_to = getattr(io, "copy_to", None) if kernel_copy else None
                    if copy_to is not None:
                        copy_to(src, fd, pos, nbytes)
                        pos += nbytes
                        continue
                    if buf is None:
                        buf, zeros = memoryview(bytearray(chunk)), memoryview(bytes(chunk))
                    if readinto is not None:
                        got = readinto(src, buf[:nbytes])
                        write_sparse(fd, buf[:got], pos, zeros)
                    else:
                        write_sparse(fd, memoryview(io.pread(src, nbytes)), pos, zeros)
                pos += nbytes
            if progress:
                progress(n)
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise StorageError(f"{out_path}: {exc.strerror}") from exc
        raise
    finally:
        os.close(fd)
    return img.size


HOLE_GRAIN = 64 * 1024


def write_sparse(fd: int, data: memoryview, pos: int, zeros: memoryview | bytes) -> None:
    """pwrite `data` at `pos`, leaving each all-zero 64 KiB piece a hole (as `qemu-img convert`
    does); non-zero pieces in a row go out in one call. `zeros` is at least as long as `data`.

    Compares are `bytes.startswith` (a memcmp); `memoryview == memoryview` compares item by
    item, ~100x slower (measured)."""
    z = zeros.obj if isinstance(zeros, memoryview) else zeros
    if not isinstance(z, bytes):
        z = bytes(len(data))
    n = len(data)
    if z.startswith(data):
        return
    start = None
    for p in range(0, n, HOLE_GRAIN):
        q = min(p + HOLE_GRAIN, n)
        if z.startswith(data[p:q]):
            if start is not None:
                os.pwrite(fd, data[start:p], pos + start)
                start = None
        elif start is None:
            start = p
    if start is not None:
        os.pwrite(fd, data[start:], pos + start)


def check(path: str | os.PathLike[str], *, max_depth: int = DEFAULT_MAX_DEPTH,
          lock: LockMode | None = None) -> list[str]:
    """Every problem found in the VHD at `path` and its chain, one line each ([] = consistent)."""
    problems: list[str] = []
    try:
        img = open_chain(path, read_only=True, max_depth=max_depth, lock=lock)
    except ImageLockedError:
        raise                 # in use elsewhere: not a problem of the image
    except StorageError as exc:
        return [str(exc)]
    try:
        for im in iter_chain(img):
            problems += [f"{im.name}: {w}" for w in im.warnings]
            if im.parent is not None and im.header is not None and \
                    im.header.parent_timestamp != im.parent.footer.timestamp:
                problems.append(
                    f"{im.name}: dynamic header field 'parent_timestamp' at offset "
                    f"{im.footer.data_offset + 56}: {im.header.parent_timestamp} differs from "
                    f"the parent's footer timestamp {im.parent.footer.timestamp} (parent "
                    "modified or replaced?)")
        for d in {os.path.dirname(os.path.abspath(im.name)) for im in iter_chain(img)}:
            problems += [f"{j}: interrupted coalesce pending" for j in pending_journals(d)]
    finally:
        img.close()
    return problems
