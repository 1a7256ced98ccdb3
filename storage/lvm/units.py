"""Sizes as LVM2 spells them: `100m`, `1.5g`, `4096b`, `8s` (binary units; default MiB)."""
from __future__ import annotations

from storage.errors import LvmError
from storage.units import parse_size as _parse_size


def parse_size(text: str, *, default_unit: str = "m") -> int:
    """`10g`, `512M`, `4096b`, `100` (default MiB) → bytes, as LVM2 reads -L."""
    return _parse_size(text, default_unit=default_unit, error=LvmError)


def human(n: int) -> str:
    """LVM2's default size display: `20.00m`."""
    for unit, factor in (("e", 1 << 60), ("p", 1 << 50), ("t", 1 << 40), ("g", 1 << 30),
                         ("m", 1 << 20), ("k", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.2f}{unit}"
    return f"{n}b"
