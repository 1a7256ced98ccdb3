"""A small xenstore: a tree of string keys with watches, and the xenbus device state machine.

`XenStore` is the store itself (one per host). Domains talk to it through an `XsHandle`, which
carries the caller's domain id: domain 0 (the toolstack, backends) may write anywhere, a guest
only under its own `/local/domain/<domid>/`. Reads are open, as the toolstack grants guests read
access to their backends' directories.

Watches fire once when set (as in Xen) and then on every write or removal at or below the
watched path.

Guests are held to oxenstored's default per-domain quotas (`oxenstored.conf`: quota-maxentity
1000, quota-maxsize 2048, quota-maxwatch 100, quota-transaction 10, quota-path-max 1024; dom0
is exempt), answered with the errors oxenstored gives (`EQUOTA` for entries and watches,
`E2BIG` for a value too big). Entries count against the domain that created them; when a
guest goes, what it wrote goes with it (`forget_domain`), and a destroyed domain's whole tree
is removed (`rm_domain`), as xenstored does on @releaseDomain. This store has no transactions,
so quota-transaction has nothing to bound here.

Frontend and backend negotiate through it:

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


class XenStoreQuotaError(XenStoreError):
    """A guest over one of its quotas; the message starts with xenstored's errno name."""


#: oxenstored's defaults (tools/ocaml/xenstored/oxenstored.conf.in)
QUOTA_MAXENTITY = 1000
QUOTA_MAXSIZE = 2048
QUOTA_MAXWATCH = 100
QUOTA_TRANSACTION = 10
QUOTA_PATH_MAX = 1024


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
        self.domid = 0
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
        self._owner: dict[str, int] = {}          # path -> domid that created it (guests only)
        self._entries: dict[int, int] = {}        # domid -> entries it owns

    def read(self, path: str) -> str | None:
        """Value at `path`, or None."""
        return self._data.get(_check_path(path))

    def entries(self, domid: int) -> int:
        """Entries domain `domid` created and still owns (what quota-maxentity counts)."""
        return self._entries.get(domid, 0)

    def write(self, path: str, value: str, *, domid: int = 0) -> None:
        """Set `path` (parents spring into existence as empty directories), as `domid`:
        a guest is held to its quotas, checked before anything changes."""
        _check_path(path)
        value = str(value)
        parts = path.split("/")
        new = [p for p in ("/".join(parts[:i]) for i in range(2, len(parts) + 1))
               if p not in self._data]
        if domid != 0:
            if len(path) > QUOTA_PATH_MAX:
                raise XenStoreQuotaError(f"EINVAL: path of {len(path)} bytes is longer than "
                                         f"quota-path-max {QUOTA_PATH_MAX}")
            if len(value.encode()) > QUOTA_MAXSIZE:
                raise XenStoreQuotaError(
                    f"E2BIG: value of {len(value.encode())} bytes for {path} is over "
                    f"quota-maxsize {QUOTA_MAXSIZE}")
            if new and self.entries(domid) + len(new) > QUOTA_MAXENTITY:
                raise XenStoreQuotaError(
                    f"EQUOTA: domain {domid} owns {self.entries(domid)} entries; "
                    f"{len(new)} more would pass quota-maxentity {QUOTA_MAXENTITY}")
        for p in new:
            self._data[p] = ""
        self._data[path] = value
        if domid != 0 and new:
            for p in new:
                self._owner[p] = domid
            self._entries[domid] = self.entries(domid) + len(new)
        self._fire(path)

    def rm(self, path: str) -> None:
        """Remove `path` and everything below it."""
        _check_path(path)
        gone = [p for p in self._data if _under(p, path)]
        for p in gone:
            del self._data[p]
            owner = self._owner.pop(p, None)
            if owner is not None:
                self._entries[owner] -= 1
                if not self._entries[owner]:
                    del self._entries[owner]
        if gone:
            self._fire(path)

    def forget_domain(self, domid: int) -> int:
        """Remove every entry domain `domid` created (its connection went); returns how many.
        Entries the toolstack made for it (its devices, memory) stay for a reconnect."""
        mine = sorted((p for p, o in self._owner.items() if o == domid), key=len)
        removed = 0
        for p in mine:
            if p in self._data:
                before = len(self._data)
                self.rm(p)
                removed += before - len(self._data)
        return removed

    def rm_domain(self, domid: int) -> None:
        """Remove domain `domid`'s whole tree (the domain was destroyed)."""
        self.forget_domain(domid)
        self.rm(f"/local/domain/{domid}")

    def ls(self, path: str) -> list[str]:
        """Names of the direct children of `path`."""
        prefix = _check_path(path).rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self._data if p.startswith(prefix)})

    def watch(self, path: str, *, domid: int = 0) -> Watch:
        """Watch `path` and below; fires once immediately. A guest may hold QUOTA_MAXWATCH."""
        _check_path(path)
        if domid != 0 and sum(1 for w in self._watches if w.domid == domid) >= QUOTA_MAXWATCH:
            raise XenStoreQuotaError(f"EQUOTA: domain {domid} already has {QUOTA_MAXWATCH} "
                                     "watches (quota-maxwatch)")
        w = Watch(path, self._unwatch)
        w.domid = domid
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
        self.store.write(path, value, domid=self.domid)

    async def rm(self, path: str) -> None:
        """Remove a subtree (permission-checked)."""
        self._may_write(_check_path(path))
        self.store.rm(path)

    async def ls(self, path: str) -> list[str]:
        """Children of `path`."""
        return self.store.ls(path)

    def watch(self, path: str) -> Watch:
        """Watch `path` and below (a guest's watches count against its quota)."""
        return self.store.watch(path, domid=self.domid)


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
