"""`hvsim vhd export`, `vdi export` and `vdi import` as real processes take the fast path
(`storage.cli.fast`): no typer, rich or netsim loaded, the same output and errors as the full
CLI, and anything unusual (help, unknown options) still handled by the full CLI."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from storage.cli import fast
from storage.sr.sr import SR
from storage.vhd import chain

MiB = 1 << 20

#: runs `hvsim ARGS` as `python -m netsim` and reports the heavy modules it loaded
_PROBE = """import atexit, runpy, sys
atexit.register(lambda: print("LOADED", sorted({m.split(".")[0] for m in sys.modules
                if m.split(".")[0] in ("typer", "rich", "scapy", "pydantic")}
                | {m for m in sys.modules if m.startswith("netsim.")}), file=sys.stderr))
sys.argv[0] = "hvsim"
runpy.run_module("netsim", run_name="__main__")
"""


def hvsim(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, str, list[str]]:
    """(status, stdout, stderr without the probe line, modules loaded)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    lines = proc.stderr.splitlines()
    loaded = eval(lines[-1].removeprefix("LOADED "))      # a list literal of our own making
    loaded.remove("netsim.cli")                          # the entry point's own package
    return proc.returncode, proc.stdout, "\n".join(lines[:-1]), loaded


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    """A 2-deep chain and the content it reads as."""
    base, leaf = tmp_path / "base.vhd", tmp_path / "leaf.vhd"
    rng = random.Random(5)
    img = chain.create_image(base, size=8 * MiB)
    want = bytearray(img.size)
    for off in (0, 3 * MiB + 512):
        data = rng.randbytes(100_000)
        img.write(off, data)
        want[off:off + len(data)] = data
    img.close()
    img = chain.create_image(leaf, parent_path=base)
    img.write(MiB, b"leaf" * 1000)
    want[MiB:MiB + 4000] = b"leaf" * 1000
    img.close()
    return leaf, bytes(want)


def test_vhd_export_fast_path_loads_no_cli_framework(image: tuple[Path, bytes],
                                                     tmp_path: Path) -> None:
    leaf, want = image
    out = tmp_path / "out.raw"
    code, stdout, stderr, loaded = hvsim("vhd", "export", leaf, out)
    assert code == 0 and stderr == ""
    assert stdout == f"exported {len(want)} bytes to {out}\n"
    assert out.read_bytes() == want
    assert loaded == []                                  # no typer/rich/scapy/netsim.x
    # the full CLI (a progress bar forces it) prints the same line and the same file
    out2 = tmp_path / "out2.raw"
    code, stdout2, _, loaded = hvsim("vhd", "export", "-U", leaf, out2,
                                     env={"HVSIM_PROGRESS": "1"})
    assert code == 0 and "typer" in loaded
    assert stdout2 == f"exported {len(want)} bytes to {out2}\n"
    assert out2.read_bytes() == want


def test_fast_path_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    code, stdout, stderr, loaded = hvsim("vhd", "export", tmp_path / "nope.vhd",
                                         tmp_path / "o.raw")
    assert code == 2 and stdout == "" and loaded == []
    assert stderr == f"error: {tmp_path / 'nope.vhd'}: no such file"
    code, _, stderr, _ = hvsim("vdi", "export", "--sr", tmp_path / "nosr", "x", tmp_path / "o")
    assert code == 2 and stderr.startswith("error: ") and len(stderr.splitlines()) == 1
    assert not (tmp_path / "o.raw").exists() and not (tmp_path / "o").exists()


def test_vdi_export_and_import_fast_path(image: tuple[Path, bytes], tmp_path: Path) -> None:
    leaf, want = image
    sr = SR.create(tmp_path / "sr")
    vdi = sr.vdi_create("d", len(want))
    sr.close()
    raw = tmp_path / "in.raw"
    img = chain.open_chain(leaf)
    chain.export(img, raw)
    img.close()
    code, stdout, stderr, loaded = hvsim("vdi", "import", "--sr", tmp_path / "sr", vdi.uuid,
                                         raw)
    assert (code, stderr, loaded) == (0, "", [])
    assert stdout.startswith(f"imported {raw} into VDI {vdi.uuid} (")
    out = tmp_path / "out.raw"
    code, stdout, stderr, loaded = hvsim("vdi", "export", f"--sr={tmp_path / 'sr'}",
                                         "--format", "raw", vdi.uuid, out)
    assert (code, stderr, loaded) == (0, "", [])
    assert stdout == f"exported {len(want)} bytes of VDI {vdi.uuid} to {out}\n"
    assert out.read_bytes() == want


def test_anything_unusual_goes_to_the_full_cli(tmp_path: Path) -> None:
    assert fast.parse(["vhd", "export", "a", "b"]) == (("vhd", "export"), {}, ["a", "b"])
    assert fast.parse(["vdi", "export", "x", "--sr=s", "f", "--base", "b"]) == (
        ("vdi", "export"), {"--sr": "s", "--base": "b"}, ["x", "f"])
    for argv in (["vhd", "export", "--help"], ["vhd", "export", "a"],
                 ["vhd", "export", "a", "b", "c"], ["vhd", "export", "--bogus", "a", "b"],
                 ["vdi", "export", "u", "f"],                        # --sr is required
                 ["vdi", "import", "--sr", "s", "--sr", "t", "u", "f"],
                 ["vdi", "import", "--sr"], ["vhd", "info", "a"], []):
        assert fast.parse(argv) is None, argv
    code, stdout, stderr, loaded = hvsim("vhd", "export", "--bogus", "a", "b")
    assert code == 2 and "typer" in loaded and "No such option" in stderr + stdout
