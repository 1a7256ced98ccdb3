"""A small xenstore: a tree of string keys with watches, and the xenbus device state machine.

`XenStore` is the store itself (one per host). Domains talk to it through an `XsHandle`, which
carries the caller's domain id: domain 0 (the toolstack, backends) may write anywhere, a guest
only under its own `/local/domain/<domid>/`. Reads are open, as the toolstack grants guests read
access to their backends' directories.

Watches fire once when set (as in Xen) and then on every write or removal at or below the
watched path. Frontend and backend negotiate through it:

    backend  Initialising → InitWait      (features published)
    frontend Initialising → Initialised   (ring-ref, event-channel published)
    backend  → Connected                  (sectors, sector-size, info published)
    frontend → Connected
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from enum import IntEnum
from typing import Protocol

from storage.errors import RingProtocolError


class XenStoreError(RingProtocolError):
    """A xenstore request that is not allowed or names a bad path."""


class XenbusState(IntEnum):
    """`enum xenbus_state` (io/xenbus.h)."""

    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8


def _check_path(path: str) -> str:
    if not path.startswith("/") or "//" in path or (len(path) > 1 and path.endswith("/")):
        raise XenStoreError(f"bad xenstore path {path!r}")
    if len(path) > 3072:
        raise XenStoreError("xenstore path too long")
    return path


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


class Watch:
    """A registered watch: iterate to receive the paths that changed (bounded, coalescing)."""

    def __init__(self, path: str, on_close: Callable[[Watch], None]) -> None:
        self.path = path
        self._on_close = on_close
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self.fire(path)

    def fire(self, path: str) -> None:
        """Queue a change event (an already queued path is not queued twice)."""
        if path not in self._pending:
            self._pending.add(path)
            self._queue.put_nowait(path)

    async def next(self) -> str:
        """The next changed path."""
        path = await self._queue.get()
        self._pending.discard(path)
        return path

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[str]:
        while True:
            yield await self.next()

    def close(self) -> None:
        """Unregister."""
        self._on_close(self)

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class XenStore:
    """The key space of one host."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._watches: list[Watch] = []

    def read(self, path: str) -> str | None:
        """Value at `path`, or None."""
        return self._data.get(_check_path(path))

    def write(self, path: str, value: str) -> None:
        """Set `path` (parents spring into existence as empty directories)."""
        _check_path(path)
        parts = path.split("/")
        for i in range(2, len(parts)):
            self._data.setdefault("/".join(parts[:i]), "")
        self._data[path] = str(value)
        self._fire(path)

    def rm(self, path: str) -> None:
        """Remove `path` and everything below it."""
        _check_path(path)
        gone = [p for p in self._data if _under(p, path)]
        for p in gone:
            del self._data[p]
        if gone:
            self._fire(path)

    def ls(self, path: str) -> list[str]:
        """Names of the direct children of `path`."""
        prefix = _check_path(path).rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self._data if p.startswith(prefix)})

    def watch(self, path: str) -> Watch:
        """Watch `path` and below; fires once immediately."""
        w = Watch(_check_path(path), self._unwatch)
        self._watches.append(w)
        return w

    def _unwatch(self, w: Watch) -> None:
        if w in self._watches:
            self._watches.remove(w)

    def _fire(self, path: str) -> None:
        for w in list(self._watches):
            if _under(path, w.path) or _under(w.path, path):
                w.fire(path)

    def handle(self, domid: int) -> XsHandle:
        """A connection acting as domain `domid`."""
        return XsHandle(self, domid)


class Xs(Protocol):
    """What frontends and backends need from xenstore, in-process or over a socket."""

    domid: int

    async def read(self, path: str) -> str | None: ...
    async def write(self, path: str, value: str) -> None: ...
    async def rm(self, path: str) -> None: ...
    async def ls(self, path: str) -> list[str]: ...
    def watch(self, path: str) -> Watch: ...


class XsHandle:
    """Domain `domid`'s connection to an in-process `XenStore`, with write permissions."""

    def __init__(self, store: XenStore, domid: int) -> None:
        self.store = store
        self.domid = domid

    def _may_write(self, path: str) -> None:
        if self.domid != 0 and not _under(path, f"/local/domain/{self.domid}"):
            raise XenStoreError(f"domain {self.domid} may not write {path}")

    async def read(self, path: str) -> str | None:
        """Value at `path`, or None."""
        return self.store.read(path)

    async def write(self, path: str, value: str) -> None:
        """Set `path` (permission-checked)."""
        self._may_write(_check_path(path))
        self.store.write(path, value)

    async def rm(self, path: str) -> None:
        """Remove a subtree (permission-checked)."""
        self._may_write(_check_path(path))
        self.store.rm(path)

    async def ls(self, path: str) -> list[str]:
        """Children of `path`."""
        return self.store.ls(path)

    def watch(self, path: str) -> Watch:
        """Watch `path` and below."""
        return self.store.watch(path)


def parse_state(value: str | None) -> XenbusState:
    """A state node's value; missing or garbage reads as UNKNOWN (it comes from the other end)."""
    try:
        return XenbusState(int(value or 0))
    except ValueError:
        return XenbusState.UNKNOWN


async def wait_for_state(xs: Xs, path: str, states: Iterable[XenbusState]) -> XenbusState:
    """Wait until the state node at `path` holds one of `states`; returns it."""
    wanted = set(states)
    async with xs.watch(path) as w:
        while True:
            state = parse_state(await xs.read(path))
            if state in wanted:
                return state
            await w.next()


async def read_int(xs: Xs, path: str, *, default: int | None = None,
                   lo: int = 0, hi: int = 2**64 - 1) -> int:
    """An integer node written by the other end, range-checked (it may be hostile)."""
    raw = await xs.read(path)
    if raw is None:
        if default is None:
            raise XenStoreError(f"{path}: missing")
        return default
    try:
        value = int(raw, 0) if raw.strip().lower().startswith("0x") else int(raw)
    except ValueError as exc:
        raise XenStoreError(f"{path}: not an integer: {raw[:40]!r}") from exc
    if not lo <= value <= hi:
        raise XenStoreError(f"{path}: {value} outside {lo}..{hi}")
    return value
