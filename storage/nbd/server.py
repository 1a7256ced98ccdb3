"""An NBD server for any `BlockDevice`: raw files, VHD chains, LVs, SR VDIs, memory disks.

Speaks fixed newstyle negotiation (EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
LIST/SET_META_CONTEXT with `base:allocation`) and the transmission commands READ, WRITE, DISC,
FLUSH, TRIM, WRITE_ZEROES and BLOCK_STATUS, as the NBD project's `doc/proto.md` defines them.

Every read and write goes through the disk's own `read`/`write` (a VHD chain copies on write
into its leaf, in its crash-safe order); each request runs to completion on the event loop
before the next one starts, so requests of several clients never interleave inside a disk.
Payloads are bounded by `max_request` (32 MiB, as qemu-nbd and nbdkit use); a client that
breaks a MUST of the protocol, or sends a write payload larger than the bound, is disconnected.
Nothing a client sends can reach outside the disk: every range is checked against its size.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import struct
from collections import Counter
from dataclasses import dataclass, field

from storage.devices.blockdev import BlockDevice
from storage.errors import StorageError
from storage.nbd import proto as p
from storage.nbd.extents import AllocationMap

log = logging.getLogger(__name__)

MAX_REQUEST = 32 * 2**20
#: option payloads beyond this are a denial of service, not a negotiation
MAX_OPTION_DATA = 64 * 1024
#: options one connection may send before it is taken for a denial of service
MAX_OPTIONS = 256
#: seconds a client has from connecting to choosing an export
NEGOTIATION_TIMEOUT = 30.0
#: clients served at once (qemu-nbd's --shared defaults to 1; libnbd's multi-conn uses 4)
MAX_CLIENTS = 16
#: descriptors in one BLOCK_STATUS reply
MAX_EXTENTS = 2048
_ZERO_CHUNK = 4 * 2**20
_CONTEXT_ID = 1
_BLOCK_SIZE_MIN, _BLOCK_SIZE_PREFERRED = 1, 4096


@dataclass
class Export:
    """A disk offered under a name."""

    name: str
    dev: BlockDevice
    description: str = ""
    read_only: bool = False
    allocation: AllocationMap = field(init=False)

    def __post_init__(self) -> None:
        self.read_only = self.read_only or self.dev.read_only
        self.allocation = AllocationMap(self.dev)


@dataclass
class Stats:
    """What the server did, for tests and `--verbose`."""

    connections: int = 0
    active: int = 0
    commands: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    disconnects: Counter = field(default_factory=Counter)
    bytes_read: int = 0
    bytes_written: int = 0


class _Hangup(Exception):
    """Close this connection now (hard disconnect); the message says why."""


class NbdServer:
    """Serves `exports` to NBD clients; use `async with NbdServer(...) as srv: await
    srv.listen_tcp(...)`. The first export also answers the empty (default) export name."""

    def __init__(self, exports: list[Export], *, max_request: int = MAX_REQUEST,
                 max_clients: int = MAX_CLIENTS,
                 negotiation_timeout: float = NEGOTIATION_TIMEOUT) -> None:
        if not exports:
            raise StorageError("NBD server: nothing to export")
        self.exports = {e.name: e for e in exports}
        self.default = exports[0]
        self.max_request = max_request
        self.max_clients = max_clients
        self.negotiation_timeout = negotiation_timeout
        self.stats = Stats()
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._unix_paths: list[str] = []

    async def __aenter__(self) -> NbdServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0 picks one); returns the bound (host, port)."""
        try:
            srv = await asyncio.start_server(self._client, host, port, reuse_address=True)
        except OSError as exc:
            raise StorageError(f"NBD server: cannot listen on {host}:{port}: "
                               f"{exc.strerror or exc}") from exc
        self._servers.append(srv)
        addr = srv.sockets[0].getsockname()
        return addr[0], addr[1]

    async def listen_unix(self, path: str) -> str:
        """Listen on a Unix socket at `path`."""
        try:
            srv = await asyncio.start_unix_server(self._client, path)
        except OSError as exc:
            raise StorageError(f"NBD server: cannot listen on {path}: "
                               f"{exc.strerror or exc}") from exc
        self._servers.append(srv)
        self._unix_paths.append(path)
        return path

    async def close(self) -> None:
        """Stop listening, end every connection, flush the disks (not close them)."""
        for srv in self._servers:
            srv.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._unix_paths.clear()
        for e in self.exports.values():
            e.allocation.close()
            if not e.read_only:
                with contextlib.suppress(StorageError, OSError):
                    e.dev.flush()

    # --- one connection --------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.stats.connections += 1
        if self.stats.active >= self.max_clients:
            self.stats.disconnects[f"more than {self.max_clients} clients"] += 1
            writer.close()
            if task is not None:
                self._tasks.discard(task)
            return
        self.stats.active += 1
        peer = writer.get_extra_info("peername")
        why = "client closed"
        try:
            conn = _Connection(self, reader, writer)
            await conn.run()
        except _Hangup as exc:
            why = str(exc)
            log.info("nbd %s: disconnected: %s", peer, why)
        except (asyncio.IncompleteReadError, ConnectionError):
            why = "client closed"
        except TimeoutError:
            why = f"no export chosen within {self.negotiation_timeout:g} s"
        finally:
            self.stats.active -= 1
            self.stats.disconnects[why] += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)


class _Connection:
    """State of one client: negotiation, then the request loop."""

    def __init__(self, server: NbdServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.srv = server
        self.r = reader
        self.w = writer
        self.no_zeroes = False
        self.structured = False
        self.meta_export: str | None = None
        self.meta_on = False
        self.export: Export | None = None

    # --- negotiation -----------------------------------------------------------------------

    def _lookup(self, name: str) -> Export | None:
        if name == "":
            return self.srv.default
        return self.srv.exports.get(name)

    def _tflags(self, e: Export) -> int:
        f = (p.TFLAG_HAS_FLAGS | p.TFLAG_SEND_FLUSH | p.TFLAG_SEND_FUA | p.TFLAG_CAN_MULTI_CONN)
        if e.read_only:
            f |= p.TFLAG_READ_ONLY
        else:
            f |= p.TFLAG_SEND_TRIM | p.TFLAG_SEND_WRITE_ZEROES
        if self.structured:
            f |= p.TFLAG_SEND_DF
        return f

    async def run(self) -> None:
        async with asyncio.timeout(self.srv.negotiation_timeout):
            await self._negotiate()
        if self.export is None:
            return                                      # ABORT
        await self._transmission(self.export)

    async def _negotiate(self) -> None:
        self.w.write(p.greeting())
        (cflags,) = struct.unpack(">I", await self.r.readexactly(4))
        if cflags & ~(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES):
            raise _Hangup(f"unknown client flags {cflags:#x}")
        self.no_zeroes = bool(cflags & p.FLAG_C_NO_ZEROES)
        for _ in range(MAX_OPTIONS):
            magic, opt, length = p.OPTION_HEADER.unpack(await self.r.readexactly(16))
            if magic != p.IHAVEOPT:
                raise _Hangup(f"option magic {magic:#x} is not IHAVEOPT")
            if length > MAX_OPTION_DATA:
                raise _Hangup(f"option {opt} with {length} bytes of data (limit "
                              f"{MAX_OPTION_DATA})")
            data = await self.r.readexactly(length)
            if await self._option(opt, data):
                break
        else:
            raise _Hangup(f"more than {MAX_OPTIONS} options")

    def _reply(self, opt: int, rep: int, data: bytes = b"") -> None:
        self.w.write(p.option_reply(opt, rep, data))

    def _error(self, opt: int, rep: int, message: str) -> None:
        self.srv.stats.errors[f"option {p.OPTION_NAMES.get(opt, opt)}"] += 1
        self._reply(opt, rep, message.encode()[:4096])

    async def _option(self, opt: int, data: bytes) -> bool:
        """Handle one option; True when negotiation is over (GO, EXPORT_NAME, ABORT)."""
        try:
            done = self._option_sync(opt, data)
        except p.NbdProtocolError as exc:
            self._error(opt, p.REP_ERR_INVALID, str(exc))
            done = False
        await self.w.drain()
        return done

    def _option_sync(self, opt: int, data: bytes) -> bool:
        if opt == p.OPT_EXPORT_NAME:
            e = self._lookup(p._string(data, "export name"))
            if e is None:
                raise _Hangup(f"EXPORT_NAME of unknown export {data[:64]!r}")
            self.w.write(p.export_name_reply(e.dev.size, self._tflags(e),
                                             no_zeroes=self.no_zeroes))
            self._select(e)
            return True
        if opt == p.OPT_ABORT:
            self._reply(opt, p.REP_ACK)
            return True
        if opt == p.OPT_LIST:
            if data:
                self._error(opt, p.REP_ERR_INVALID, "LIST takes no data")
                return False
            for e in self.srv.exports.values():
                self._reply(opt, p.REP_SERVER, p.rep_server(e.name, e.description))
            self._reply(opt, p.REP_ACK)
            return False
        if opt in (p.OPT_INFO, p.OPT_GO):
            req = p.parse_info_request(data)
            e = self._lookup(req.name)
            if e is None:
                self._error(opt, p.REP_ERR_UNKNOWN, f"no export named {req.name!r}")
                return False
            self._reply(opt, p.REP_INFO, p.info_export(e.dev.size, self._tflags(e)))
            if p.INFO_NAME in req.requests:
                self._reply(opt, p.REP_INFO, p.info_name(e.name))
            if p.INFO_DESCRIPTION in req.requests and e.description:
                self._reply(opt, p.REP_INFO, p.info_description(e.description))
            self._reply(opt, p.REP_INFO, p.info_block_size(
                _BLOCK_SIZE_MIN, _BLOCK_SIZE_PREFERRED, self.srv.max_request))
            self._reply(opt, p.REP_ACK)
            if opt == p.OPT_GO:
                self._select(e)
                return True
            return False
        if opt == p.OPT_STRUCTURED_REPLY:
            if data:
                self._error(opt, p.REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
            else:
                self.structured = True
                self._reply(opt, p.REP_ACK)
            return False
        if opt in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            req = p.parse_meta_request(data)
            if not self.structured:
                self._error(opt, p.REP_ERR_INVALID, "negotiate STRUCTURED_REPLY first")
                return False
            if self._lookup(req.name) is None:
                self._error(opt, p.REP_ERR_UNKNOWN, f"no export named {req.name!r}")
                return False
            if opt == p.OPT_LIST_META_CONTEXT:
                listed = not req.queries or any(q in ("base:", p.BASE_ALLOCATION)
                                                for q in req.queries)
                if listed:
                    self._reply(opt, p.REP_META_CONTEXT, p.rep_meta_context(0, p.BASE_ALLOCATION))
            else:
                self.meta_on = p.BASE_ALLOCATION in req.queries
                self.meta_export = req.name
                if self.meta_on:
                    self._reply(opt, p.REP_META_CONTEXT,
                                p.rep_meta_context(_CONTEXT_ID, p.BASE_ALLOCATION))
            self._reply(opt, p.REP_ACK)
            return False
        if opt == p.OPT_STARTTLS:
            self._error(opt, p.REP_ERR_POLICY, "TLS is not offered by this server")
            return False
        self._error(opt, p.REP_ERR_UNSUP, f"option {opt} is not supported")
        return False

    def _select(self, e: Export) -> None:
        self.export = e
        if self.meta_export is not None and self._lookup(self.meta_export) is not e:
            self.meta_on = False       # contexts were chosen for another export

    # --- transmission ----------------------------------------------------------------------

    async def _transmission(self, e: Export) -> None:
        st = self.srv.stats
        size = e.dev.size
        while True:
            magic, flags, cmd, cookie, offset, length = p.REQUEST.unpack(
                await self.r.readexactly(p.REQUEST.size))
            if magic != p.REQUEST_MAGIC:
                raise _Hangup(f"request magic {magic:#x}")
            name = p.COMMAND_NAMES.get(cmd, str(cmd))
            st.commands[name] += 1
            if cmd == p.CMD_DISC:
                return
            if cmd == p.CMD_WRITE:
                if length > self.srv.max_request:
                    # the payload is on its way and is too big to take: hang up
                    raise _Hangup(f"WRITE of {length} bytes (limit {self.srv.max_request})")
                data = await self.r.readexactly(length)
                err, msg = self._write(e, flags, offset, data, size)
                self._simple(cookie, err, msg, name)
            elif cmd == p.CMD_READ:
                self._read(e, flags, cookie, offset, length, size)
            elif cmd == p.CMD_FLUSH:
                err, msg = self._io(lambda: e.dev.flush())
                self._simple(cookie, err, msg, name)
            elif cmd == p.CMD_TRIM:
                err, msg = self._check_write(e, offset, length, size, p.EINVAL)
                if not err:
                    err, msg = self._io(functools.partial(self._trim, e, flags, offset, length))
                self._simple(cookie, err, msg, name)
            elif cmd == p.CMD_WRITE_ZEROES:
                err, msg = self._check_write(e, offset, length, size, p.ENOSPC)
                if not err:
                    err, msg = await self._zero(e, flags, offset, length)
                self._simple(cookie, err, msg, name)
            elif cmd == p.CMD_BLOCK_STATUS:
                self._block_status(e, flags, cookie, offset, length, size)
            else:
                self._simple(cookie, p.EINVAL, f"command {cmd} is not supported", name)
            if self.w.transport.get_write_buffer_size() > 4 * 2**20:
                await self.w.drain()
            else:
                await asyncio.sleep(0)       # let other clients in between requests

    def _simple(self, cookie: int, err: int, msg: str, what: str) -> None:
        if err:
            self.srv.stats.errors[what] += 1
            if self.structured:
                self.w.write(p.error_chunk(cookie, err, msg))
                return
        self.w.write(p.simple_reply(cookie, err))

    @staticmethod
    def _io(fn) -> tuple[int, str]:  # type: ignore[no-untyped-def]
        try:
            fn()
        except (StorageError, OSError) as exc:
            log.warning("nbd: I/O error: %s", exc)
            return p.EIO, str(exc)
        return 0, ""

    @staticmethod
    def _check_write(e: Export, offset: int, length: int, size: int,
                     beyond: int) -> tuple[int, str]:
        if e.read_only:
            return p.EPERM, "the export is read-only"
        if offset + length > size:
            return beyond, f"range {offset}+{length} is beyond the end ({size} bytes)"
        return 0, ""

    def _write(self, e: Export, flags: int, offset: int, data: bytes,
               size: int) -> tuple[int, str]:
        err, msg = self._check_write(e, offset, len(data), size, p.ENOSPC)
        if err:
            return err, msg

        def do() -> None:
            e.dev.write(offset, data)
            if flags & p.CMD_FLAG_FUA:
                e.dev.flush()

        err, msg = self._io(do)
        if not err:
            self.srv.stats.bytes_written += len(data)
        return err, msg

    @staticmethod
    def _trim(e: Export, flags: int, offset: int, length: int) -> None:
        if length:
            e.dev.discard(offset, length)
        if flags & p.CMD_FLAG_FUA:
            e.dev.flush()

    async def _zero(self, e: Export, flags: int, offset: int, length: int) -> tuple[int, str]:
        """Make the range read as zeros. Without NO_HOLE, ranges the disk already reads as
        holes are left alone (in a chain, a hole means no image holds data there)."""
        if flags & p.CMD_FLAG_FAST_ZERO:
            return p.ENOTSUP, "fast zeroing is not offered"
        if flags & p.CMD_FLAG_NO_HOLE:
            pieces = [(length, False)]
        else:
            pieces = e.allocation.pieces(offset, length, limit=1 << 30)
        zeros = bytes(min(length, _ZERO_CHUNK))
        pos = offset
        for n, hole in pieces:
            if not hole:
                done = 0
                while done < n:
                    k = min(n - done, len(zeros))
                    err, msg = self._io(functools.partial(
                        e.dev.write, pos + done, zeros if k == len(zeros) else zeros[:k]))
                    if err:
                        return err, msg
                    done += k
                    await asyncio.sleep(0)
            pos += n
        if flags & p.CMD_FLAG_FUA:
            return self._io(lambda: e.dev.flush())
        return 0, ""

    def _read(self, e: Export, flags: int, cookie: int, offset: int, length: int,
              size: int) -> None:
        st = self.srv.stats
        err, msg = 0, ""
        if length > self.srv.max_request:
            err, msg = (p.EOVERFLOW if self.structured and flags & p.CMD_FLAG_DF else p.EINVAL,
                        f"READ of {length} bytes (limit {self.srv.max_request})")
        elif offset + length > size:
            err, msg = p.EINVAL, f"range {offset}+{length} is beyond the end ({size} bytes)"
        if err:
            st.errors["READ"] += 1
            self.w.write(p.error_chunk(cookie, err, msg) if self.structured
                         else p.simple_reply(cookie, err))
            return
        if length == 0:
            self.w.write(p.none_chunk(cookie) if self.structured else p.simple_reply(cookie))
            return
        pieces = [(length, False)]
        if self.structured and not flags & p.CMD_FLAG_DF and e.allocation.exact:
            pieces = e.allocation.pieces(offset, length, limit=64)
            if sum(n for n, _ in pieces) != length:
                pieces = [(length, False)]
        parts: list[tuple[int, int, bytes | None]] = []
        pos = offset
        try:
            for n, hole in pieces:
                parts.append((pos, n, None if hole else e.dev.read(pos, n)))
                pos += n
        except (StorageError, OSError) as exc:
            st.errors["READ"] += 1
            log.warning("nbd: read error: %s", exc)
            self.w.write(p.error_chunk(cookie, p.EIO, str(exc)) if self.structured
                         else p.simple_reply(cookie, p.EIO))
            return
        st.bytes_read += length
        if not self.structured:
            self.w.write(p.simple_reply(cookie))
            self.w.write(parts[0][2])  # type: ignore[arg-type]
            return
        last = len(parts) - 1
        for i, (off, n, data) in enumerate(parts):
            if data is None:
                self.w.write(p.hole_chunk(cookie, off, n, done=i == last))
            else:
                self.w.write(p.data_chunk_header(cookie, off, n, done=i == last))
                self.w.write(data)

    def _block_status(self, e: Export, flags: int, cookie: int, offset: int, length: int,
                      size: int) -> None:
        err, msg = 0, ""
        if not self.structured or not self.meta_on:
            err, msg = p.EINVAL, "no metadata context was selected"
        elif offset + length > size:
            err, msg = p.EINVAL, f"range {offset}+{length} is beyond the end ({size} bytes)"
        elif length == 0:
            err, msg = p.EINVAL, "BLOCK_STATUS of zero bytes"
        if err:
            self._simple(cookie, err, msg, "BLOCK_STATUS")
            return
        limit = 1 if flags & p.CMD_FLAG_REQ_ONE else MAX_EXTENTS
        try:
            pieces = e.allocation.pieces(offset, length, limit=limit)
        except (StorageError, OSError) as exc:
            self._simple(cookie, p.EIO, str(exc), "BLOCK_STATUS")
            return
        extents: list[tuple[int, int]] = []
        for n, hole in pieces:
            while n:
                k = min(n, 0xFFFFFE00)       # a descriptor's length is 32 bits
                extents.append((k, p.STATE_HOLE | p.STATE_ZERO if hole else 0))
                n -= k
        self.w.write(p.block_status_chunk(cookie, _CONTEXT_ID, extents[:limit]))
