"""Sizes as users type them: `64M`, `1.5g`, `4096`, `8s`, `10GiB` (binary units)."""
from __future__ import annotations

import re

from storage.errors import StorageError

UNITS = {"b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
         "p": 1 << 50, "e": 1 << 60}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([bskmgtpe]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str, *, default_unit: str = "b",
               error: type[StorageError] = StorageError) -> int:
    """`64M` → 67108864; a bare number is in `default_unit`. Raises `error` when malformed or
    not a whole number of bytes."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise error(f"{text!r} is not a size (examples: 4096, 64K, 10M, 1.5G)")
    value = float(m.group(1)) * UNITS[(m.group(2) or default_unit).lower()]
    if value != int(value):
        raise error(f"{text!r} is not a whole number of bytes")
    return int(value)
