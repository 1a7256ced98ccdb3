"""MAC learning table keyed on (VLAN, MAC), after Open vSwitch `lib/mac-learning.c`.

- Entries age out `aging_s` after they were last seen (300 s default; OVS allows 15-3600).
- Capacity is bounded (8192 default). When full, the least recently used entry of the port
  holding the most entries is evicted, so one port flooding source MACs cannot push out the
  others' entries.
- An entry moved or refreshed by a gratuitous ARP is locked for 5 s: during that time ordinary
  frames from the same MAC on another port do not move it (a GARP says "I moved", a stray frame
  does not).
- An optional per-port limit (`learn(..., limit=N)`) refuses new MACs beyond N on a port.
- A live entry learned again on another port is a move (OVS `ovs-appctl fdb/stats-show`
  "Total number of moved MAC entries"): counted in `moves`, and reported to `on_move` - the
  MAC flapping a switch logs when one source MAC keeps arriving on two ports.

Time is passed in (`now_ns`), never read here, so the table is deterministic under any clock.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from netsim.errors import ConfigError
from netsim.wire.frame import mac_to_str

P = TypeVar("P", bound=Hashable)

_NS = 1_000_000_000
DEFAULT_SIZE = 8192
DEFAULT_AGING_S = 300.0
GARP_LOCK_S = 5.0

LEARNED = 0  # the source is (now) known on this port
LOCKED = 1  # a GARP lock kept the entry on its old port; the frame is still forwarded
NO_SPACE = 2  # the port's MAC limit refused a new address


class _Entry(Generic[P]):
    __slots__ = ("last_ns", "locked_until_ns", "lru", "port")

    def __init__(self, port: P, last_ns: int, lru: OrderedDict) -> None:
        self.port = port
        self.last_ns = last_ns
        self.locked_until_ns = 0
        self.lru = lru


@dataclass(frozen=True, slots=True)
class MacEntry:
    """One row of `MacTable.entries()`."""

    vlan: int
    mac: str
    port: object
    age_s: float
    locked: bool


class MacTable(Generic[P]):
    """(VLAN, MAC) → port, with aging, bounded size, fair eviction and GARP locking."""

    def __init__(self, *, size: int = DEFAULT_SIZE, aging_s: float = DEFAULT_AGING_S) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"mac_table_size: {size!r} must be a positive integer")
        if not 1 <= aging_s <= 86_400:
            raise ConfigError(f"aging_s: {aging_s!r} must be between 1 and 86400 seconds")
        self.size = size
        self.aging_s = float(aging_s)
        self._table: dict[tuple[int, bytes], _Entry[P]] = {}
        #: get_entry((vid, mac)) -> entry with .port, .last_ns, .lru, or None; for the switch's
        #: inlined fast path, which must refresh by `e.last_ns = now; e.lru.move_to_end(key)`
        #: and treat `now - e.last_ns > aging_ns` as unknown.
        self.get_entry = self._table.get
        self.aging_ns = int(aging_s * _NS)
        self._by_port: dict[P, OrderedDict[tuple[int, bytes], None]] = {}
        self._last_sweep_ns = -(1 << 62)
        self._entry_waiter: asyncio.Future[None] | None = None
        #: how many entries were evicted to make room, aged out, and moves refused by a lock
        self.evictions = 0
        self.expirations = 0
        self.lock_refusals = 0
        self.moves = 0
        #: called as on_move(vid, mac, old_port, new_port, now_ns) when a live entry moves
        self.on_move: Callable[[int, bytes, P, P, int], None] | None = None

    def __len__(self) -> int:
        return len(self._table)

    def learn(
        self, vid: int, mac: bytes, port: P, now_ns: int, *, garp: bool = False, limit: int = 0
    ) -> int:
        """Record that `mac` in VLAN `vid` was seen on `port`. Returns LEARNED, LOCKED or
        NO_SPACE."""
        key = (vid, mac)
        e = self._table.get(key)
        if e is not None:
            if e.port == port:
                e.last_ns = now_ns
                e.lru.move_to_end(key)
                if garp:
                    e.locked_until_ns = now_ns + int(GARP_LOCK_S * _NS)
                return LEARNED
            if (
                not garp
                and now_ns < e.locked_until_ns
                and now_ns - e.last_ns <= self.aging_ns
            ):
                self.lock_refusals += 1
                return LOCKED
            if now_ns - e.last_ns <= self.aging_ns:
                self.moves += 1
                if self.on_move is not None:
                    self.on_move(vid, mac, e.port, port, now_ns)
            self._remove(key, e)
        lru = self._by_port.get(port)
        if limit and lru is not None and len(lru) >= limit:
            return NO_SPACE
        if len(self._table) >= self.size:
            self._make_room(now_ns)
        if lru is None:
            lru = self._by_port[port] = OrderedDict()
            w = self._entry_waiter
            if w is not None:  # the aging task waits for a first entry
                self._entry_waiter = None
                if not w.done():
                    w.set_result(None)
        ne = _Entry(port, now_ns, lru)
        if garp:
            ne.locked_until_ns = now_ns + int(GARP_LOCK_S * _NS)
        self._table[key] = ne
        lru[key] = None
        return LEARNED

    def lookup(self, vid: int, mac: bytes, now_ns: int) -> P | None:
        """The port `mac` in VLAN `vid` was last seen on, or None if unknown or aged out."""
        e = self._table.get((vid, mac))
        if e is None:
            return None
        if now_ns - e.last_ns > self.aging_ns:
            self._remove((vid, mac), e)
            self.expirations += 1
            return None
        return e.port

    def next_expiry_ns(self) -> int | None:
        """When the least recently seen entry ages out (None if the table is empty). Each port's
        entries are kept least recently seen first, so this costs one look per port."""
        table = self._table
        oldest = min((table[next(iter(lru))].last_ns for lru in self._by_port.values()),
                     default=None)
        return None if oldest is None else oldest + self.aging_ns + 1

    async def wait_for_entry(self) -> None:
        """Return once the table holds an entry (at once if it does)."""
        while not self._table:
            w = self._entry_waiter
            if w is None or w.done():
                w = self._entry_waiter = asyncio.get_running_loop().create_future()
            await w

    def expire(self, now_ns: int) -> int:
        """Remove every aged-out entry; returns how many."""
        old = [k for k, e in self._table.items() if now_ns - e.last_ns > self.aging_ns]
        for k in old:
            self._remove(k, self._table[k])
        self.expirations += len(old)
        self._last_sweep_ns = now_ns
        return len(old)

    def flush(self, port: P | None = None, vid: int | None = None) -> int:
        """Forget entries (of one port and/or VLAN, or all); returns how many."""
        doomed = [
            k
            for k, e in self._table.items()
            if (port is None or e.port == port) and (vid is None or k[0] == vid)
        ]
        for k in doomed:
            self._remove(k, self._table[k])
        return len(doomed)

    def count(self, port: P) -> int:
        """How many entries point at `port`."""
        lru = self._by_port.get(port)
        return len(lru) if lru else 0

    def entries(self, now_ns: int) -> list[MacEntry]:
        """Live entries (not aged out), sorted by VLAN then MAC."""
        rows = [
            MacEntry(vid, mac_to_str(mac), e.port, (now_ns - e.last_ns) / _NS,
                     now_ns < e.locked_until_ns)
            for (vid, mac), e in self._table.items()
            if now_ns - e.last_ns <= self.aging_ns
        ]
        rows.sort(key=lambda r: (r.vlan, r.mac))
        return rows

    def _remove(self, key: tuple[int, bytes], e: _Entry[P]) -> None:
        del self._table[key]
        lru = e.lru
        del lru[key]
        if not lru:
            self._by_port.pop(e.port, None)

    def _make_room(self, now_ns: int) -> None:
        # Aged entries go first; sweep at most once a second so a MAC flood stays O(1) per frame.
        if now_ns - self._last_sweep_ns >= _NS and self.expire(now_ns):
            return
        fattest = max(self._by_port.values(), key=len)
        key = next(iter(fattest))
        self._remove(key, self._table[key])
        self.evictions += 1
