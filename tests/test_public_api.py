"""The package roots give users one import for the public API, loaded lazily."""
from __future__ import annotations

import subprocess
import sys

import pytest

import netsim
import storage


@pytest.mark.parametrize("package", [netsim, storage], ids=lambda m: m.__name__)
def test_every_public_name_resolves(package: object) -> None:
    for name in package.__all__:  # type: ignore[attr-defined]
        assert getattr(package, name) is not None, name


def test_the_root_names_are_the_layered_objects() -> None:
    from netsim.lab.lab import Lab
    from storage.sr.sr import SR

    assert netsim.Lab is Lab
    assert storage.SR is SR


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = netsim.Nope  # type: ignore[attr-defined]


def test_importing_the_root_loads_no_layer() -> None:
    code = ("import sys, netsim, storage; "
            "print(sorted(m for m in sys.modules if m.startswith(('netsim.', 'storage.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
