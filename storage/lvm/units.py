"""Sizes as LVM2 spells them: `100m`, `1.5g`, `4096b`, `8s` (binary units; default MiB)."""
from __future__ import annotations

import re

from storage.errors import LvmError

UNITS = {"b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
         "p": 1 << 50, "e": 1 << 60}


def parse_size(text: str, *, default_unit: str = "m") -> int:
    """`10g`, `512M`, `4096b`, `100` (default MiB) → bytes, as LVM2 reads -L."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bBsSkKmMgGtTpPeE]?)(?:i?[bB])?\s*", text)
    if not m:
        raise LvmError(f"invalid size {text!r} (examples: 100m, 1.5g, 4096b)")
    unit = (m.group(2) or default_unit).lower()
    return int(float(m.group(1)) * UNITS[unit])


def human(n: int) -> str:
    """LVM2's default size display: `20.00m`."""
    for unit, factor in (("e", 1 << 60), ("p", 1 << 50), ("t", 1 << 40), ("g", 1 << 30),
                         ("m", 1 << 20), ("k", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.2f}{unit}"
    return f"{n}b"
