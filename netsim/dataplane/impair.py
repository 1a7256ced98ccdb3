"""Link impairment: delay, jitter, loss, reordering, duplication, corruption and rate, as netem.

The semantics are Linux netem's (`tc-netem(8)`, `net/sched/sch_netem.c`), re-implemented here:

- `Impairment` is the validated configuration of one direction (what `tc qdisc ... netem ...`
  says); `parse_impairment` reads it from YAML-shaped data and reports a bad value through the
  caller's `fail(path, message)` so topology and scenario files name file, line and key.
- `NetemModel` is the pure decision maker: given the time and a frame it draws from its own
  seeded RNG and says when each copy of the frame leaves, or why it is dropped. Its draws follow
  netem's order (duplicate, loss, corrupt, limit, reorder, delay) with netem's arithmetic: 32-bit
  probabilities, the correlated generator `get_crandom`, `tabledist` over the distribution
  tables iproute2 ships (normal, pareto, paretonormal; regenerated here by the same recipe),
  Gilbert-Elliott and the 4-state model of Salsano et al. as `loss_gilb_ell`/`loss_4state`,
  rate with packet overhead and cells as `packet_time_ns`.
- `ImpairedPath` puts a model on a clock: frames wait in a delay line and one task releases
  them at their time, sleeping until the next deadline (so idle virtual time is one jump). Drops
  are counted on the port the impairment belongs to (`impair-loss`, `impair-queue`); a corrupted
  frame is counted `corrupt` by the port that receives it.

Where we differ from netem, and why:
- Jitter keeps frames in order by default (`order: fifo`): a frame never leaves before the one
  queued ahead of it, as netem behaves with `rate` or with a pfifo child qdisc. netem's own
  default, its tfifo that lets each frame leave at its own time so that jitter reorders, is
  `order: tfifo`; `reorder:` is the other, explicit way to reorder.
- A delay that the distribution draws below zero is zero (netem sends such a packet at once).
- `corrupt` flips one random bit of the frame, as netem does, but on the wire: the receiver's
  FCS check then fails, so the receiving port drops the frame and counts it `corrupt` (a NIC's
  `rx_crc_errors`); it does not appear in the receiver's capture. With netem the qdisc sits
  above the NIC, which computes the FCS over the already corrupted bytes, and the frame is
  delivered for IP/TCP/UDP checksums to catch.
- `correlation` uses netem's generator as it is (`get_crandom`: the new u32 mixed with the last
  one), not a corrected one. Like netem's, it barely changes delay draws (the uniform modulo and
  the table index read its low bits) and it pulls the draws toward the middle, so a correlated
  `loss: {random: ...}` loses far less than its percentage (measured here: 10 % with 50 %
  correlation loses about 0.1 %). For bursty loss use `gilbert` or `state`.
- The Gilbert-Elliott parameters are the model's: `h` and `k` are the probabilities that a frame
  gets through in the Bad and Good state (tc's `1-h`/`1-k` are their complements).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import random
import re
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, fields
from typing import Any

U32 = 0xFFFF_FFFF
NETEM_DIST_SCALE = 8192  # table entries are s16 multiples of sigma/8192 (netem's scale)
DEFAULT_LIMIT = 1000  # netem's default queue limit, in packets
DISTRIBUTIONS = ("uniform", "normal", "pareto", "paretonormal")
#: drop reasons an impairment adds to a port's counters
IMPAIR_DROPS = ("impair-loss", "impair-queue", "corrupt")


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class RandomLoss:
    """Independent loss with probability `p` (0..1), `correlation` as netem's `loss P CORR`."""

    p: float
    correlation: float = 0.0


@dataclass(frozen=True)
class GilbertElliott:
    """Two states, Good and Bad: `p` = P(Good→Bad), `r` = P(Bad→Good); a frame gets through
    with probability `k` in Good and `h` in Bad (tc-netem `gemodel p r 1-h 1-k`). `h=0, k=1` is
    the simple Gilbert model: loss rate p/(p+r), mean burst 1/r."""

    p: float
    r: float
    h: float = 0.0
    k: float = 1.0


@dataclass(frozen=True)
class FourState:
    """Salsano et al.'s 4-state Markov model (tc-netem `loss state p13 p31 p32 p23 p14`):
    1 = received in a gap, 2 = received in a burst, 3 = lost in a burst, 4 = isolated loss."""

    p13: float
    p31: float
    p32: float = 0.0
    p23: float = 1.0
    p14: float = 0.0


LossModel = RandomLoss | GilbertElliott | FourState


@dataclass(frozen=True)
class Impairment:
    """One direction's netem settings. Times in ns, probabilities 0..1, rate in bits/s."""

    delay_ns: int = 0
    jitter_ns: int = 0
    delay_correlation: float = 0.0
    distribution: str = "uniform"
    loss: LossModel | None = None
    duplicate: float = 0.0
    duplicate_correlation: float = 0.0
    corrupt: float = 0.0
    corrupt_correlation: float = 0.0
    reorder: float = 0.0
    reorder_correlation: float = 0.0
    gap: int = 0
    rate_bps: int = 0
    overhead: int = 0  # bytes added to (or, negative, taken from) each frame for `rate`
    cell_size: int = 0
    cell_overhead: int = 0
    limit: int = DEFAULT_LIMIT
    #: "fifo": frames leave in the order they came (jitter never reorders); "tfifo": each
    #: leaves at its own time, so jitter larger than the gap between frames reorders them
    #: (netem's default internal queue)
    order: str = "fifo"

    @property
    def active(self) -> bool:
        """False when it changes nothing (no delay, loss, ... at all)."""
        return bool(self.delay_ns or self.jitter_ns or self.loss is not None or self.duplicate
                    or self.corrupt or self.reorder or self.rate_bps)

    def describe(self) -> str:
        """A short tc-netem-like summary (`delay 20ms 5ms normal loss 1%`)."""
        parts: list[str] = []
        if self.delay_ns or self.jitter_ns:
            parts.append(f"delay {_fmt_ns(self.delay_ns)}")
            if self.jitter_ns:
                parts.append(_fmt_ns(self.jitter_ns))
                if self.distribution != "uniform":
                    parts.append(self.distribution)
        lm = self.loss
        if isinstance(lm, RandomLoss):
            parts.append(f"loss {_pct(lm.p)}")
        elif isinstance(lm, GilbertElliott):
            parts.append(f"loss gemodel p={_pct(lm.p)} r={_pct(lm.r)} h={_pct(lm.h)} "
                         f"k={_pct(lm.k)}")
        elif isinstance(lm, FourState):
            parts.append(f"loss state {_pct(lm.p13)} {_pct(lm.p31)} {_pct(lm.p32)} "
                         f"{_pct(lm.p23)} {_pct(lm.p14)}")
        for name in ("duplicate", "corrupt", "reorder"):
            v = getattr(self, name)
            if v:
                parts.append(f"{name} {_pct(v)}")
        if self.gap:
            parts.append(f"gap {self.gap}")
        if self.rate_bps:
            r = self.rate_bps
            unit = next((u for u, k in (("Gbit", 10**9), ("Mbit", 10**6), ("Kbit", 10**3))
                         if r % k == 0), "bit")
            parts.append(f"rate {r // {'Gbit': 10**9, 'Mbit': 10**6, 'Kbit': 10**3}.get(unit, 1)}"
                         f"{unit}")
        if self.limit != DEFAULT_LIMIT:
            parts.append(f"limit {self.limit}")
        return " ".join(parts) or "none"


def _pct(p: float) -> str:
    return f"{p * 100:g}%"


def _fmt_ns(ns: int) -> str:
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns and ns % scale == 0:
            return f"{ns // scale}{unit}"
    return f"{ns / 1e6:g}ms" if ns >= 1000 else f"{ns}ns"


# -------------------------------------------------------------------------------- parsing
PathT = tuple[str | int, ...]
Fail = Callable[[PathT, str], Exception]

IMPAIR_KEYS = ("delay", "jitter", "correlation", "distribution", "loss", "duplicate",
               "corrupt", "reorder", "gap", "rate", "overhead", "cell_size", "cell_overhead",
               "limit", "order")
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|usec|ms|msec|s|sec)\s*$")
_TIME_SCALE = {"ns": 1, "us": 10**3, "µs": 10**3, "usec": 10**3, "ms": 10**6, "msec": 10**6,
               "s": 10**9, "sec": 10**9}
_PCT_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*%\s*$")
# tc(8) units: bit (bare number too), kbit, mbit, gbit, tbit, and bps = bytes/s (kbps, ...);
# `ibit`/`ibps` are the binary (1024) prefixes.
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(bit|bps)?\s*$", re.IGNORECASE)
_RATE_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_time(value: Any, path: PathT, fail: Fail, what: str = "time") -> int:
    """`20ms`, `1.5s`, `250us`, `0` → ns; negative or unit-less numbers are refused."""
    if isinstance(value, bool):
        raise fail(path, f"{what} must be a time like 20ms, got {value!r}")
    if isinstance(value, (int, float)):
        if value == 0:
            return 0
        if value < 0:
            raise fail(path, f"{what} cannot be negative, got {value!r}")
        raise fail(path, f"give {what} a unit, e.g. {value}ms (ns, us, ms, s)")
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("-"):
            raise fail(path, f"{what} cannot be negative, got {value!r}")
        m = _TIME_RE.match(s)
        if m:
            return round(float(m.group(1)) * _TIME_SCALE[m.group(2)])
    raise fail(path, f"{what} must be a time like 20ms or 1.5s, got {value!r}")


def parse_percent(value: Any, path: PathT, fail: Fail, what: str = "probability") -> float:
    """`0.5%` or a bare number (percent, as tc) → 0..1; outside 0-100% is refused."""
    if isinstance(value, bool):
        raise fail(path, f"{what} must be a percentage like 1%, got {value!r}")
    if isinstance(value, (int, float)):
        pct = float(value)
    elif isinstance(value, str) and (m := _PCT_RE.match(value)):
        pct = float(m.group(1))
    else:
        raise fail(path, f"{what} must be a percentage like 1% or 0.5%, got {value!r}")
    if not 0.0 <= pct <= 100.0 or math.isnan(pct):
        raise fail(path, f"{what} must be between 0% and 100%, got {value!r}")
    return pct / 100.0


def parse_rate(value: Any, path: PathT, fail: Fail) -> int:
    """tc units: `100Mbit`, `1gbit`, `10mbps` (bytes/s), a bare number = bits/s → bits/s."""
    if isinstance(value, bool):
        raise fail(path, f"rate must be like 100Mbit, got {value!r}")
    if isinstance(value, (int, float)):
        n = int(value)
    elif isinstance(value, str) and (m := _RATE_RE.match(value)):
        num, prefix, binary, unit = m.groups()
        scale = (1024 ** " kmgt".index(prefix.lower() or " ")) if binary else \
            _RATE_SCALE[prefix.lower()]
        n = int(float(num) * scale * (8 if unit and unit.lower() == "bps" else 1))
    else:
        raise fail(path, f"rate must be like 100Mbit, 1Gbit or 10mbps (bytes/s), got {value!r}")
    if n <= 0:
        raise fail(path, f"rate must be positive, got {value!r}")
    return n


def _integer(value: Any, path: PathT, fail: Fail, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise fail(path, f"{what} must be an integer {lo}-{hi}, got {value!r}")
    return value


def _mapping(value: Any, path: PathT, fail: Fail, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(path, f"expected a mapping, got {value!r}")
    for k in value:
        if k not in allowed:
            raise fail((*path, str(k)), f"unknown key {k!r} (expected one of: "
                       f"{', '.join(allowed)})")
    return dict(value)


def _prob_pair(value: Any, path: PathT, fail: Fail, name: str) -> tuple[float, float]:
    """`P` or `{probability: P, correlation: C}`."""
    if isinstance(value, Mapping):
        m = _mapping(value, path, fail, ("probability", "correlation"))
        if "probability" not in m:
            raise fail(path, f"{name} needs `probability:`")
        return (parse_percent(m["probability"], (*path, "probability"), fail, name),
                parse_percent(m.get("correlation", 0), (*path, "correlation"), fail,
                              "correlation"))
    return parse_percent(value, path, fail, name), 0.0


def _loss(value: Any, path: PathT, fail: Fail) -> LossModel | None:
    if not isinstance(value, Mapping):
        p = parse_percent(value, path, fail, "loss")
        return RandomLoss(p) if p else None
    if len(value) != 1:
        raise fail(path, "loss is a percentage, or one of {random: ...}, {gilbert: {p, r, h, "
                   "k}}, {state: {p13, p31, p32, p23, p14}}")
    (kind, raw), = value.items()
    kp = (*path, str(kind))
    if kind == "random":
        p, corr = _prob_pair(raw, kp, fail, "loss")
        return RandomLoss(p, corr)
    if kind in ("gilbert", "gemodel", "gilbert_elliott"):
        m = _mapping(raw, kp, fail, ("p", "r", "h", "k"))
        if "p" not in m:
            raise fail(kp, "the Gilbert-Elliott model needs `p` (P(Good→Bad))")
        p = parse_percent(m["p"], (*kp, "p"), fail, "p")
        # tc-netem defaults: r = 1 - p, 1-h = 100% (all lost in Bad), 1-k = 0% (none in Good)
        r = parse_percent(m["r"], (*kp, "r"), fail, "r") if "r" in m else 1.0 - p
        h = parse_percent(m.get("h", 0), (*kp, "h"), fail, "h")
        k = parse_percent(m.get("k", 100), (*kp, "k"), fail, "k")
        if p == 0 and r == 0:
            raise fail(kp, "p and r cannot both be 0 (the chain would never move)")
        return GilbertElliott(p, r, h, k)
    if kind == "state":
        m = _mapping(raw, kp, fail, ("p13", "p31", "p32", "p23", "p14"))
        if "p13" not in m:
            raise fail(kp, "the 4-state model needs `p13`")
        p13 = parse_percent(m["p13"], (*kp, "p13"), fail, "p13")
        # tc-netem defaults: p31 = 1 - p13, p32 = 0, p23 = 1, p14 = 0
        p31 = parse_percent(m["p31"], (*kp, "p31"), fail, "p31") if "p31" in m else 1.0 - p13
        p32 = parse_percent(m.get("p32", 0), (*kp, "p32"), fail, "p32")
        p23 = parse_percent(m.get("p23", 100), (*kp, "p23"), fail, "p23")
        p14 = parse_percent(m.get("p14", 0), (*kp, "p14"), fail, "p14")
        if p13 + p14 > 1.0 + 1e-12:
            raise fail(kp, "p13 + p14 cannot exceed 100% (both leave state 1)")
        if p31 + p32 > 1.0 + 1e-12:
            raise fail(kp, "p31 + p32 cannot exceed 100% (both leave state 3)")
        return FourState(p13, p31, p32, p23, p14)
    raise fail(kp, f"unknown loss model {kind!r} (random, gilbert, state)")


def parse_impairment(raw: Any, path: PathT, fail: Fail) -> Impairment:
    """Read one direction's settings (the keys of `IMPAIR_KEYS`), refusing bad values with
    `fail(path_of_the_key, message)`."""
    m = _mapping(raw if raw is not None else {}, path, fail, IMPAIR_KEYS)
    kw: dict[str, Any] = {}
    if "delay" in m:
        kw["delay_ns"] = parse_time(m["delay"], (*path, "delay"), fail, "delay")
    if "jitter" in m:
        kw["jitter_ns"] = parse_time(m["jitter"], (*path, "jitter"), fail, "jitter")
        if kw["jitter_ns"] > U32:
            raise fail((*path, "jitter"), "jitter can be at most 4.29s (netem's 32 bits of ns)")
    if "correlation" in m:
        kw["delay_correlation"] = parse_percent(m["correlation"], (*path, "correlation"), fail,
                                                "correlation")
    if "distribution" in m:
        d = m["distribution"]
        if d not in DISTRIBUTIONS:
            raise fail((*path, "distribution"), f"unknown distribution {d!r} (expected one "
                       f"of: {', '.join(DISTRIBUTIONS)})")
        kw["distribution"] = d
    if "loss" in m:
        kw["loss"] = _loss(m["loss"], (*path, "loss"), fail)
    for name in ("duplicate", "corrupt", "reorder"):
        if name in m:
            kw[name], kw[f"{name}_correlation"] = _prob_pair(m[name], (*path, name), fail, name)
    if "gap" in m:
        kw["gap"] = _integer(m["gap"], (*path, "gap"), fail, 1, U32, "gap")
    if "rate" in m:
        kw["rate_bps"] = parse_rate(m["rate"], (*path, "rate"), fail)
    if "overhead" in m:
        kw["overhead"] = _integer(m["overhead"], (*path, "overhead"), fail, -1500, 65535,
                                  "overhead (bytes per frame)")
    if "cell_size" in m:
        kw["cell_size"] = _integer(m["cell_size"], (*path, "cell_size"), fail, 1, 65535,
                                   "cell_size (bytes)")
    if "cell_overhead" in m:
        kw["cell_overhead"] = _integer(m["cell_overhead"], (*path, "cell_overhead"), fail,
                                       -255, 255, "cell_overhead (bytes)")
    if "order" in m:
        if m["order"] not in ("fifo", "tfifo"):
            raise fail((*path, "order"), f"order must be fifo (jitter keeps frames in order) or "
                       f"tfifo (netem's default: each frame leaves at its own time), got "
                       f"{m['order']!r}")
        kw["order"] = m["order"]
    if "limit" in m:
        kw["limit"] = _integer(m["limit"], (*path, "limit"), fail, 1, 10_000_000,
                               "limit (frames)")
    imp = Impairment(**kw)
    if (imp.overhead or imp.cell_size) and not imp.rate_bps:
        raise fail(path, "overhead and cell_size only apply with `rate:`")
    if imp.reorder and not imp.delay_ns:
        # tc refuses this too: reordering sends some frames at once *ahead of delayed ones*
        raise fail((*path, "reorder"), "reordering needs a delay (frames sent at once overtake "
                   "the delayed ones)")
    if imp.gap and not imp.reorder:
        raise fail((*path, "gap"), "gap needs `reorder:`")
    if imp.reorder and not imp.gap:
        imp = dataclasses.replace(imp, gap=1)  # iproute2: reorder without gap = gap 1
    if (imp.delay_correlation or imp.distribution != "uniform") and not imp.jitter_ns:
        raise fail(path, "distribution and correlation shape the jitter: give `jitter:`")
    return imp


def direction_seed(topology_seed: int, name: str) -> int:
    """The RNG seed of one impaired direction: derived from the topology seed and the
    direction's name, so adding one impairment does not change the draws of another."""
    digest = hashlib.blake2b(f"{topology_seed}/impair/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# ----------------------------------------------------------------------- distribution tables
def _normal_grid() -> list[float]:
    """iproute2 netem/normal.c: for x from -10 in steps of 0.00005 (accumulated, as the C loop
    does), slot rint(16384 * Phi(x)) keeps the last x that lands in it."""
    slots = [0.0] * 16385
    x = -10.0
    root2 = math.sqrt(2.0)
    erf = math.erf
    while x < 10.05:
        slots[round(16384 * (0.5 + 0.5 * erf(x / root2)))] = x
        x += 0.00005
    return slots


def _clamp16(v: float) -> int:
    return max(-32768, min(32767, round(v)))


def _pareto_value(j: int) -> int:
    # iproute2 netem/pareto.c: a = 3, x = (j / 65536) ** (-1 / a) - 1.5, scaled by 4/3 * 8192
    v = (1.0 / math.pow(j / 65536, 1.0 / 3.0) - 1.5) * (4.0 / 3.0) * NETEM_DIST_SCALE
    return round(min(v, 32767.0))


def make_table(name: str) -> tuple[int, ...]:
    """netem's distribution table `name` (4096 s16 entries, ascending), as iproute2 builds it
    (`normal.c`, `pareto.c`, `paretonormal.c`)."""
    if name in ("normal", "paretonormal"):
        grid = _normal_grid()
    if name == "normal":
        return tuple(_clamp16(grid[i] * NETEM_DIST_SCALE) for i in range(0, 16384, 4))
    if name == "pareto":
        return tuple(_pareto_value(j) for j in range(65536, 0, -16))
    if name == "paretonormal":
        out = []
        for i in range(0, 16384, 4):
            norm = round(grid[i] * NETEM_DIST_SCALE)
            par = _pareto_value(65536 - 4 * i)
            out.append(_clamp16(int((norm + 3 * par) / 4)))  # C int division truncates
        return tuple(out)
    raise ValueError(f"no table for distribution {name!r}")


_TABLES: dict[str, tuple[int, ...]] = {}


def table(name: str) -> tuple[int, ...]:
    """The cached table of `make_table(name)`."""
    t = _TABLES.get(name)
    if t is None:
        t = _TABLES[name] = make_table(name)
    return t


def tabledist_value(mu: int, sigma: int, t: int) -> int:
    """netem's `tabledist` for table entry `t`: mu + sigma * t / 8192, rounded as the kernel
    does it (in two parts, C division truncating toward zero)."""
    x = (sigma % NETEM_DIST_SCALE) * t
    x += NETEM_DIST_SCALE // 2 if x >= 0 else -(NETEM_DIST_SCALE // 2)
    q = abs(x) // NETEM_DIST_SCALE
    return (q if x >= 0 else -q) + (sigma // NETEM_DIST_SCALE) * t + mu


def _u32(p: float) -> int:
    return min(U32, round(p * U32))


# ------------------------------------------------------------------------------------ model
#: what `NetemModel.admit` appends to its output: (time_to_send_ns, frame, corrupted)
Release = tuple[int, bytes, bool]


@dataclass
class ImpairStats:
    """What one impaired direction did to the frames offered to it."""

    offered: int = 0
    delivered: int = 0
    lost: int = 0
    queue_dropped: int = 0
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-able snapshot."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class NetemModel:
    """netem's per-packet decisions for one direction, on integer ns; no clock, no I/O.

    `admit(now, frame, held, out)` appends to `out` one `(time_to_send, frame, corrupted)` per
    copy that will leave, or counts the drop in `stats`. `held` is how many frames the caller
    holds already (netem's `limit` counts frames waiting in the delay line). Times to send are
    non-decreasing except for frames `reorder` sends at once.
    """

    def __init__(self, imp: Impairment, rng: random.Random) -> None:
        self.rng = rng
        self.stats = ImpairStats()
        self.last_tts = 0
        self.counter = 0
        self.set(imp)

    def set(self, imp: Impairment) -> None:
        """Change the settings (tc qdisc change): frames already scheduled keep their times;
        the correlated generators restart, as netem's `init_crandom` does."""
        self.imp = imp
        bits = self.rng.getrandbits
        self._dup = _u32(imp.duplicate)
        self._dup_cor = [_u32(imp.duplicate_correlation), bits(32)]
        self._corrupt = _u32(imp.corrupt)
        self._corrupt_cor = [_u32(imp.corrupt_correlation), bits(32)]
        self._reorder = _u32(imp.reorder)
        self._reorder_cor = [_u32(imp.reorder_correlation), bits(32)]
        self._delay_cor = [_u32(imp.delay_correlation), bits(32)]
        self._mu = imp.delay_ns
        self._sigma = imp.jitter_ns
        self._table = table(imp.distribution) if imp.distribution != "uniform" else None
        self._plain_uniform = self._table is None and self._delay_cor[0] == 0
        # netem with rate always queues behind the last frame; tfifo otherwise sorts by time
        self.fifo = imp.order == "fifo" or bool(imp.rate_bps)
        self._gap = imp.gap
        self.counter = 0
        self._rate_Bps = imp.rate_bps / 8
        self._limit = imp.limit
        lm = imp.loss
        self._loss_kind = 0
        if isinstance(lm, RandomLoss):
            self._loss_kind = 1
            self._loss = _u32(lm.p)
            self._loss_cor = [_u32(lm.correlation), bits(32)]
        elif isinstance(lm, GilbertElliott):
            self._loss_kind = 2
            self._clg = (_u32(lm.p), _u32(lm.r), _u32(lm.h), _u32(lm.k))
            self._state = 1  # Good
        elif isinstance(lm, FourState):
            self._loss_kind = 3
            self._clg4 = (_u32(lm.p13), _u32(lm.p31), _u32(lm.p32), _u32(lm.p23),
                          _u32(lm.p14))
            self._state = 1  # received in a gap
        self._simple = (not self._dup and not self._corrupt and not self._reorder
                        and not imp.rate_bps)

    # -- netem's generators ---------------------------------------------------------------------
    def _crandom(self, st: list[int]) -> int:
        """netem `get_crandom`: a new u32 leaning on the last one by rho/2^32."""
        value = self.rng.getrandbits(32)
        rho = st[0]
        if rho == 0:
            return value
        rho += 1
        answer = (value * ((1 << 32) - rho) + st[1] * rho) >> 32
        st[1] = answer
        return answer

    def _loss_event(self) -> bool:
        kind = self._loss_kind
        if kind == 1:
            if self._loss_cor[0] == 0:
                return self._loss != 0 and self._loss >= self.rng.getrandbits(32)
            return self._loss != 0 and self._loss >= self._crandom(self._loss_cor)
        bits = self.rng.getrandbits
        if kind == 2:  # netem loss_gilb_ell: move (first draw), then lose by the old state
            p, r, h, k = self._clg
            if self._state == 1:
                if bits(32) < p:
                    self._state = 2
                return bits(32) >= k if k != U32 else False
            if bits(32) < r:
                self._state = 1
            return bits(32) >= h if h != U32 else False
        if kind == 3:  # netem loss_4state: one draw picks the next state; 3 and 4 are losses
            p13, p31, p32, _p23, p14 = self._clg4
            rnd = bits(32)
            s = self._state
            if s == 1:
                if rnd < p14:
                    self._state = 4
                    return True
                if rnd < p13 + p14:
                    self._state = 3
                    return True
                return False
            if s == 2:
                if rnd < self._clg4[3]:
                    self._state = 3
                    return True
                return False
            if s == 3:
                if rnd < p32:
                    self._state = 2
                    return False
                if rnd < p31 + p32:
                    self._state = 1
                    return False
                return True
            self._state = 1  # 4: an isolated loss is followed by a reception
            return False
        return False

    def _delay(self) -> int:
        sigma = self._sigma
        if sigma == 0:
            return self._mu
        rnd = self._crandom(self._delay_cor)
        tbl = self._table
        if tbl is None:
            return (rnd % (2 * sigma)) + self._mu - sigma
        return tabledist_value(self._mu, sigma, tbl[rnd % len(tbl)])

    def packet_time_ns(self, length: int) -> int:
        """netem `packet_time_ns`: serialization time of `length` bytes at the rate."""
        imp = self.imp
        n = length + imp.overhead
        if imp.cell_size:
            cells = -(-n // imp.cell_size) if n > 0 else 0
            n = cells * (imp.cell_size + imp.cell_overhead)
        return int(n * 1_000_000_000 // self._rate_Bps) if n > 0 else 0

    # -- one frame -------------------------------------------------------------------------------
    def admit(self, now: int, frame: bytes, held: int, out: list[Release],
              *, dup_ok: bool = True) -> None:
        """Decide the fate of `frame` offered at `now` (see the class docstring)."""
        st = self.stats
        st.offered += 1
        if self._simple:  # delay/jitter/loss only: netem's path without the optional draws
            if self._loss_kind and self._loss_event():
                st.lost += 1
                return
            if held >= self._limit:
                st.queue_dropped += 1
                return
            sigma = self._sigma
            if sigma == 0:
                tts = now + self._mu
            elif self._plain_uniform:  # netem: (rnd % 2 sigma) + mu - sigma
                d = self.rng.getrandbits(32) % (2 * sigma) + self._mu - sigma
                tts = now + d if d > 0 else now
            else:
                tts = now + max(0, self._delay())
            if tts < self.last_tts and self.fifo:
                tts = self.last_tts
            self.last_tts = tts
            out.append((tts, frame, False))
            return
        count = 1
        if dup_ok and self._dup and self._dup >= self._crandom(self._dup_cor):
            count = 2
        if self._loss_kind and self._loss_event():
            count -= 1  # netem: a lost frame's duplicate still goes (as the frame itself)
        if count == 0:
            st.lost += 1
            return
        if count == 2:  # netem re-enqueues the clone first, with duplication off
            st.duplicated += 1
            before = len(out)
            self.admit(now, frame, held, out, dup_ok=False)
            st.offered -= 1
            held += len(out) - before
        corrupted = False
        if self._corrupt and self._corrupt >= self._crandom(self._corrupt_cor):
            bits = self.rng.getrandbits
            if frame:
                pos = bits(32) % len(frame)
                bit = bits(32) % 8
                b = bytearray(frame)
                b[pos] ^= 1 << bit
                frame = bytes(b)
                corrupted = True
                st.corrupted += 1
        if held >= self._limit:
            st.queue_dropped += 1
            return
        if self._gap and (self.counter >= self._gap - 1
                          and self._reorder >= self._crandom(self._reorder_cor)):
            self.counter = 0
            st.reordered += 1
            out.append((now, frame, corrupted))  # at the head: leaves now, ahead of the line
            return
        delay = self._delay()
        if self.imp.rate_bps:
            # netem: the last queued frame is the reference; serialization adds after it
            start = now + delay if delay > 0 else now
            if start < self.last_tts:
                start = self.last_tts
            tts = start + self.packet_time_ns(len(frame))
        else:
            tts = now + max(0, delay)
            if tts < self.last_tts and self.fifo:
                tts = self.last_tts
        self.last_tts = tts
        if self._gap:
            self.counter += 1
        out.append((tts, frame, corrupted))


# ------------------------------------------------------------------------------ on a clock
Deliver = Callable[[list[bytes]], None]


class ImpairedPath:
    """One impaired direction on a clock: `offer(frame)` now, frames handed to `deliver` in
    batches at their time; a corrupted frame goes to `deliver_corrupt` instead.

    `counters` is the `PortCounters` that drops are counted on. `spawn(coro, name)` starts the
    release task (the fabric's `spawn`, so it stops with the fabric and a crash is reported).
    The task sleeps until the head of the delay line is due — never polls — and waits on a
    future while the line is empty.
    """

    def __init__(self, name: str, imp: Impairment, *, seed: int, clock: Any,
                 deliver: Deliver, counters: Any,
                 deliver_corrupt: Callable[[bytes], None] | None = None,
                 spawn: Callable[[Coroutine[Any, Any, Any], str], None] | None = None,
                 on_retired: Callable[[ImpairedPath], None] | None = None) -> None:
        self.name = name
        #: True after `retire()`: once the delay line is empty, `on_retired(self)` is called
        self.retiring = False
        self._on_retired = on_retired
        self.seed = seed
        self.model = NetemModel(imp, random.Random(seed))
        self.clock = clock
        self.deliver = deliver
        self.deliver_corrupt = deliver_corrupt
        self.counters = counters
        self._spawn = spawn
        self._line: deque[Release] = deque()
        self._out: list[Release] = []
        self._task_started = False
        self._wake: asyncio.Future[None] | None = None
        self._sleep_until = getattr(clock, "sleep_until", None)
        self._call_at = getattr(clock, "call_at", None)
        self._timer: Any = None
        self._nap: asyncio.Task[None] | None = None  # the release task's sleep (task mode)
        #: when a list: every released frame's lateness (release time - due time), in ns
        self.lateness: list[int] | None = None

    @property
    def impairment(self) -> Impairment:
        """The current settings."""
        return self.model.imp

    @property
    def stats(self) -> ImpairStats:
        """What happened to the frames so far."""
        return self.model.stats

    @property
    def held(self) -> int:
        """Frames waiting in the delay line."""
        return len(self._line)

    def set(self, imp: Impairment) -> None:
        """New settings from now on; frames in flight keep their release times."""
        self.model.set(imp)

    def retire(self) -> None:
        """The impairment was cleared: deliver what is in flight at its time, then call
        `on_retired` (frames offered meanwhile queue behind the ones in flight)."""
        self.retiring = True
        if not self._line and self._on_retired is not None:
            self._on_retired(self)

    def offer(self, frame: bytes) -> None:
        """A frame enters the impaired direction now."""
        model = self.model
        if model._simple:  # NetemModel.admit's delay/jitter/loss path, inlined (hot)
            st = model.stats
            st.offered += 1
            if model._loss_kind and model._loss_event():
                st.lost += 1
                self.counters.drop("impair-loss")
                return
            line = self._line
            if len(line) >= model._limit:
                st.queue_dropped += 1
                self.counters.drop("impair-queue")
                return
            now = self.clock.now_ns()
            sigma = model._sigma
            if sigma == 0:
                tts = now + model._mu
            elif model._plain_uniform:
                d = model.rng.getrandbits(32) % (2 * sigma) + model._mu - sigma
                tts = now + d if d > 0 else now
            else:
                d = model._delay()
                tts = now + d if d > 0 else now
            if tts < model.last_tts and model.fifo:
                tts = model.last_tts
            model.last_tts = tts
            if tts > now or line:
                if line and tts < line[-1][0]:  # tfifo: by time, not arrival
                    self._insert((tts, frame, False))
                    return
                line.append((tts, frame, False))
                if self._timer is None:
                    self._kick()
                return
            st.delivered += 1
            self.deliver([frame])
            return
        st = model.stats
        lost0, q0 = st.lost, st.queue_dropped
        out = self._out
        line = self._line
        now = self.clock.now_ns()
        model.admit(now, frame, len(line), out)
        if not out:
            self._count_drops(lost0, q0)
            return
        if len(out) == 1:
            rel = out[0]
            if rel[0] > now and not rel[2] and (not line or rel[0] >= line[-1][0]):
                out.clear()  # the usual case: at the end of the delay line
                line.append(rel)
                if self._timer is None:
                    self._kick()
                return
        self._out = []
        self._place(out, now)

    def offer_batch(self, frames: Any) -> None:
        """Several frames enter now, in order."""
        model = self.model
        st = model.stats
        lost0, q0 = st.lost, st.queue_dropped
        out = self._out
        now = self.clock.now_ns()
        held = len(self._line)
        admit = model.admit
        for f in frames:
            admit(now, f, held + len(out), out)
        self._count_drops(lost0, q0)
        if out:
            self._out = []
            self._place(out, now)

    def _count_drops(self, lost0: int, q0: int) -> None:
        st = self.model.stats
        if st.lost != lost0:
            self.counters.drop("impair-loss", st.lost - lost0)
        if st.queue_dropped != q0:
            self.counters.drop("impair-queue", st.queue_dropped - q0)

    def _place(self, out: list[Release], now: int) -> None:
        """Due frames leave now (a reordered one ahead of the line), the rest join the line."""
        line = self._line
        now_batch: list[bytes] = []
        for rel in out:
            if rel[0] <= now and (not line or rel[0] < line[0][0]):
                if rel[2]:
                    self._corrupt(rel[1])
                else:
                    now_batch.append(rel[1])
            elif line and rel[0] < line[-1][0] and rel[0] > now:
                self._insert(rel)  # tfifo: by time, not arrival
            else:
                line.append(rel)
        if now_batch:
            self.model.stats.delivered += len(now_batch)
            self.deliver(now_batch)
        if line:
            self._kick()

    def _insert(self, rel: Release) -> None:
        """Put a frame in the delay line by its time (after those due at the same time), as
        netem's tfifo does; wake the releaser earlier if it is the new head."""
        line = self._line
        i = len(line)
        while i and line[i - 1][0] > rel[0]:
            i -= 1
        line.insert(i, rel)
        if i == 0:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            elif self._nap is not None and not self._nap.done():
                self._nap.cancel()  # the task sleeps until the old head: wake it
        self._kick()

    def _corrupt(self, frame: bytes) -> None:
        self.model.stats.delivered += 1
        if self.deliver_corrupt is not None:
            self.deliver_corrupt(frame)
        else:
            self.counters.drop("corrupt")

    def _kick(self) -> None:
        if self._call_at is not None:  # a virtual clock: a timer callback, no task
            if self._timer is None:
                self._timer = self._call_at(self._line[0][0], self._fire)
            return
        if not self._task_started:
            self._task_started = True
            if self._spawn is not None:
                self._spawn(self._run(), f"impair {self.name}")
            else:
                asyncio.get_running_loop().create_task(self._run(), name=f"impair {self.name}")
            return
        w = self._wake
        if w is not None:
            self._wake = None
            if not w.done():
                w.set_result(None)

    def _fire(self) -> None:
        self._timer = None
        self._release(self.clock.now_ns())
        if self._line and self._timer is None:  # (a receiver may have offered and re-armed)
            self._timer = self._call_at(self._line[0][0], self._fire)

    def _release(self, now: int) -> None:
        """Hand every frame due by `now` to its receiver."""
        line = self._line
        batch: list[bytes] = []
        late = self.lateness
        while line and line[0][0] <= now:
            due, frame, bad = line.popleft()
            if late is not None:
                late.append(self.clock.now_ns() - due)
            if bad:
                if batch:
                    self.model.stats.delivered += len(batch)
                    self.deliver(batch)
                    batch = []
                self._corrupt(frame)
            else:
                batch.append(frame)
        if batch:
            self.model.stats.delivered += len(batch)
            self.deliver(batch)
        if not line and self.retiring and self._on_retired is not None:
            self._on_retired(self)

    def close(self) -> None:
        """Stop releasing (the fabric is stopping); frames in flight stay in `held`."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _run(self) -> None:
        line = self._line
        clock = self.clock
        sleep_until = self._sleep_until
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not line:
                    self._wake = loop.create_future()
                    await self._wake
                    continue
                due = line[0][0]
                now = clock.now_ns()
                if due > now:
                    nap = self._nap = loop.create_task(
                        sleep_until(due) if sleep_until is not None
                        else clock.sleep((due - now) / 1e9))
                    try:
                        await asyncio.wait((nap,))  # cancelled by `_insert`: a new head
                    finally:
                        if not nap.done():
                            nap.cancel()
                        self._nap = None
                    continue
                self._release(now)
                await asyncio.sleep(0)  # bounded work per wake-up: let the receivers run
        finally:
            self._task_started = False
            self._wake = None

    def __repr__(self) -> str:
        return f"<ImpairedPath {self.name}: {self.model.imp.describe()}>"


__all__ = [
    "DISTRIBUTIONS", "IMPAIR_DROPS", "IMPAIR_KEYS", "FourState", "GilbertElliott",
    "ImpairStats", "ImpairedPath", "Impairment", "NetemModel", "RandomLoss", "direction_seed",
    "make_table", "parse_impairment", "parse_percent", "parse_rate", "parse_time", "table",
    "tabledist_value",
]
