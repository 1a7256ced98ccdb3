"""Guests in other processes: the host's unix socket, and the guest's side of it.

A guest process (`hvsim guest ...`) reaches its host the way a Xen guest reaches dom0: its RAM
is a shared-memory segment the host created for the domain, its xenstore requests go over a
socket (JSON lines, like xenstored's socket), and each event channel is its own unix-socket
connection whose bytes are the notifications.

Wire protocol, one JSON object per line:

    guest → host  {"id": 1, "op": "hello", "domid": 1}
    host → guest  {"id": 1, "ok": true,
                   "result": {"shm": "...", "ram_pages": .., "grant_pages": ..}}
    guest → host  {"id": 2, "op": "read" | "write" | "rm" | "ls", "path": "...", "value": "..."}
                  {"id": 3, "op": "watch", "path": "...", "token": 7}   {"op": "unwatch", ...}
                  {"id": 4, "op": "evtchn_alloc", "remote": 0}  → {"result": PORT}
    host → guest  {"watch": 7, "path": "..."}                          (watch events)

An event-channel connection starts with `{"op": "evtchn", "domid": 1, "port": PORT}` and, after
the host's two-byte reply `+\\n`, carries only notification bytes.

The host trusts nothing in these messages beyond what the same guest could do in-process: its
xenstore writes are confined to its own directory, and it can claim a domain id only once.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from storage.errors import RingProtocolError, StorageError
from storage.rings.hypervisor import Hypervisor
from storage.rings.ring import (
    DomainMemory,
    EventChannel,
    GrantTable,
    PageAllocator,
    SocketEventChannel,
)
from storage.rings.xenstore import Watch, XenStoreError

MAX_LINE = 64 * 1024
MAX_WATCHES = 128  # per guest connection
ACK = b"+\n"


class HostLinkError(StorageError):
    """The host socket is unreachable, or it refused or broke the conversation."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _loads(line: bytes | str) -> Any:
    """A JSON line as the protocol allows it: no NaN/Infinity (Python's json would take them,
    and `int(Infinity)` is an OverflowError no handler expects)."""
    return json.loads(line, parse_constant=_reject_constant)


async def _readline(sock: socket.socket) -> bytes:
    """One line from a raw socket, byte by byte, so nothing after it is consumed."""
    loop = asyncio.get_running_loop()
    line = bytearray()
    while not line.endswith(b"\n"):
        b = await loop.sock_recv(sock, 1)
        if not b:
            raise HostLinkError("connection closed during hello")
        line += b
        if len(line) > MAX_LINE:
            raise HostLinkError("hello line too long")
    return bytes(line)


class HostServer:
    """Serves guest processes of `hv` on a unix socket at `path` (`async with`)."""

    def __init__(self, hv: Hypervisor, path: str | os.PathLike[str]) -> None:
        self.hv = hv
        self.path = os.fspath(path)
        self._sock: socket.socket | None = None
        self._accept: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._live: set[int] = set()
        self.events: asyncio.Queue[str] = asyncio.Queue()

    def _claim_path(self) -> None:
        """Refuse a socket a live host answers on; remove a stale one."""
        if not os.path.exists(self.path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # a stale socket left by a host that died
        else:
            raise HostLinkError(f"{self.path}: another host is serving on this socket")
        finally:
            probe.close()

    async def __aenter__(self) -> HostServer:
        self._claim_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise HostLinkError(f"{self.path}: cannot listen: {exc.strerror}") from exc
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self._sock = sock
        self._accept = asyncio.create_task(self._accept_loop(), name="hostlink-accept")
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._accept, *self._conns) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            task = asyncio.create_task(self._conn(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _conn(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            hello = _loads(await _readline(conn))
            if not isinstance(hello, dict):
                raise HostLinkError("hello is not an object")
            if hello.get("op") == "evtchn":
                domid, port = int(hello["domid"]), int(hello["port"])
                if domid not in self._live:
                    raise HostLinkError(f"domain {domid} has no live session")
                self.hv.evtchn.attach_remote(domid, port, SocketEventChannel(conn))
                await asyncio.get_running_loop().sock_sendall(conn, ACK)
                return  # the socket now belongs to the event channel
            if hello.get("op") != "hello":
                raise HostLinkError("expected hello")
            await self._session(conn, hello)
        except (HostLinkError, RingProtocolError, ValueError, KeyError, TypeError,
                OverflowError) as exc:
            self.events.put_nowait(f"refused a connection: {exc}")
            conn.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            conn.close()

    async def _session(self, conn: socket.socket, hello: dict[str, Any]) -> None:
        domid = int(hello["domid"])
        reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_LINE)
        if domid not in self.hv.domains or domid in self._live:
            msg = "no such domain" if domid not in self.hv.domains else "domain already attached"
            writer.write(_line({"id": hello.get("id"), "ok": False, "error": msg}))
            await writer.drain()
            writer.close()
            return
        self._live.add(domid)
        mem = self.hv.domains[domid]
        xs = self.hv.store.handle(domid)
        watches: dict[int, tuple[Watch, asyncio.Task[None]]] = {}
        self.events.put_nowait(f"domain {domid} connected")

        async def forward(token: int, w: Watch) -> None:
            async for path in w:
                writer.write(_line({"watch": token, "path": path}))

        writer.write(_line({"id": hello.get("id"), "ok": True, "result": {
            "shm": mem.name, "ram_pages": mem.ram_pages, "grant_pages": mem.grant_pages}}))
        try:
            while line := await reader.readline():
                msg = _loads(line)
                if not isinstance(msg, dict):
                    msg = {}
                rid, op = msg.get("id"), msg.get("op")
                try:
                    if op == "read":
                        result: Any = await xs.read(str(msg["path"]))
                    elif op == "write":
                        result = await xs.write(str(msg["path"]), str(msg["value"]))
                    elif op == "rm":
                        result = await xs.rm(str(msg["path"]))
                    elif op == "ls":
                        result = await xs.ls(str(msg["path"]))
                    elif op == "watch":
                        token = int(msg["token"])
                        if len(watches) >= MAX_WATCHES or token in watches:
                            raise XenStoreError("too many watches or token in use")
                        w = xs.watch(str(msg["path"]))
                        watches[token] = (w, asyncio.create_task(forward(token, w)))
                        result = None
                    elif op == "unwatch":
                        w, t = watches.pop(int(msg["token"]))
                        w.close()
                        t.cancel()
                        result = None
                    elif op == "evtchn_alloc":
                        result = self.hv.evtchn.reserve_remote(domid, int(msg["remote"]))
                    else:
                        raise XenStoreError(f"unknown op {op!r}")
                except (StorageError, KeyError, ValueError, TypeError, OverflowError) as exc:
                    writer.write(_line({"id": rid, "ok": False, "error": str(exc)}))
                else:
                    writer.write(_line({"id": rid, "ok": True, "result": result}))
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            for w, t in watches.values():
                w.close()
                t.cancel()
            self._live.discard(domid)
            gone = self.hv.store.forget_domain(domid)   # what the guest wrote goes with it
            if gone:
                self.events.put_nowait(f"domain {domid}: removed {gone} xenstore entries it "
                                       "wrote")
            self.hv.guest_gone(domid)
            self.events.put_nowait(f"domain {domid} disconnected")
            writer.close()


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class RemoteXs:
    """A guest's xenstore connection over the host socket (same API as `XsHandle`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 domid: int) -> None:
        self.domid = domid
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._watches: dict[int, Watch] = {}
        self._task = asyncio.create_task(self._read_loop(), name="remote-xs")

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                msg = json.loads(line)
                if "watch" in msg:
                    w = self._watches.get(msg["watch"])
                    if w is not None:
                        w.fire(msg["path"])
                    continue
                fut = self._calls.pop(msg.get("id"), None)
                if fut is None or fut.done():
                    continue
                if msg.get("ok"):
                    fut.set_result(msg.get("result"))
                else:
                    fut.set_exception(XenStoreError(str(msg.get("error"))))
        except (ConnectionError, ValueError):
            pass
        finally:
            for fut in self._calls.values():
                if not fut.done():
                    fut.set_exception(HostLinkError("host closed the connection"))
            self._calls.clear()

    async def call(self, op: str, **args: Any) -> Any:
        """One request/response round trip."""
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        if self._task.done():
            raise HostLinkError("host connection is closed")
        self._writer.write(_line({"id": rid, "op": op, **args}))
        await self._writer.drain()
        return await fut

    async def read(self, path: str) -> str | None:
        """Value at `path`, or None."""
        return await self.call("read", path=path)

    async def write(self, path: str, value: str) -> None:
        """Set `path`."""
        await self.call("write", path=path, value=str(value))

    async def rm(self, path: str) -> None:
        """Remove a subtree."""
        await self.call("rm", path=path)

    async def ls(self, path: str) -> list[str]:
        """Children of `path`."""
        return list(await self.call("ls", path=path))

    def watch(self, path: str) -> Watch:
        """Watch `path` and below (registered with the host as a side effect)."""
        token = next(self._tokens)

        def unwatch(_w: Watch) -> None:
            self._watches.pop(token, None)
            if not self._writer.is_closing():
                self._writer.write(_line({"id": 0, "op": "unwatch", "token": token}))

        w = Watch(path, unwatch)
        self._watches[token] = w
        self._writer.write(_line({"id": 0, "op": "watch", "path": path, "token": token}))
        return w

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class RemoteGuest:
    """A guest domain in this process, its host across the socket (satisfies `GuestSide`)."""

    def __init__(self, path: str, domid: int, xs: RemoteXs, memory: DomainMemory) -> None:
        self.path = path
        self.domid = domid
        self.xs = xs
        self.memory = memory
        self.grants = GrantTable(memory)
        self.pages = PageAllocator(memory.ram_pages)
        self._evtchns: list[EventChannel] = []

    async def alloc_unbound(self, remote_domid: int) -> tuple[int, EventChannel]:
        """Reserve a port on the host and connect its notification socket."""
        port = int(await self.xs.call("evtchn_alloc", remote=remote_domid))
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self.path)
            await loop.sock_sendall(sock, _line({"op": "evtchn", "domid": self.domid,
                                                 "port": port}))
            ack = b""
            while len(ack) < len(ACK):
                chunk = await loop.sock_recv(sock, len(ACK) - len(ack))
                if not chunk:
                    raise HostLinkError("host refused the event channel")
                ack += chunk
        except OSError as exc:
            sock.close()
            raise HostLinkError(f"{self.path}: event channel: {exc}") from exc
        ch = SocketEventChannel(sock)
        self._evtchns.append(ch)
        return port, ch


@contextlib.asynccontextmanager
async def connect_guest(path: str | os.PathLike[str], domid: int) -> AsyncIterator[RemoteGuest]:
    """Attach to the host at `path` as domain `domid`."""
    path = os.fspath(path)
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
    except OSError as exc:
        raise HostLinkError(f"{path}: cannot reach the host: {exc.strerror or exc}") from exc
    writer.write(_line({"id": 0, "op": "hello", "domid": domid}))
    await writer.drain()
    reply = json.loads(await reader.readline() or b"{}")
    if not reply.get("ok"):
        writer.close()
        raise HostLinkError(f"{path}: host refused domain {domid}: "
                            f"{reply.get('error', 'connection closed')}")
    info = reply["result"]
    if not info.get("shm"):
        writer.close()
        raise HostLinkError(f"domain {domid}'s memory is not shared; create it with shared=True")
    memory = DomainMemory.attach(info["shm"], ram_pages=int(info["ram_pages"]),
                                 grant_pages=int(info["grant_pages"]))
    xs = RemoteXs(reader, writer, domid)
    guest = RemoteGuest(path, domid, xs, memory)
    try:
        yield guest
    finally:
        for ch in guest._evtchns:
            with contextlib.suppress(OSError):
                ch.close()
        await xs.close()
        memory.close()
