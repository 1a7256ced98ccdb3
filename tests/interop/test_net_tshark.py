"""tshark reads our pcapng: every demo capture opens, names its interface after its port, and the
uplink eth0 shows the VLAN IDs 5, 65 and 400 (and untagged frames of xenbr0)."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from netsim.lab import demo

pytestmark = pytest.mark.interop


def tshark(*args: str) -> str:
    exe = shutil.which("tshark")
    assert exe, "tshark is installed by scripts/setup.sh"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, demo.DemoResult]:
    out = tmp_path_factory.mktemp("demo")
    result = asyncio.run(demo.run(out))
    return out, result


def test_demo_went_as_expected(demo_out) -> None:
    _, result = demo_out
    assert [s.label for s in result.steps if not s.ok()] == []


def test_every_capture_opens_and_names_its_interface(demo_out) -> None:
    _out, result = demo_out
    names = {p.stem for p in result.captures}
    assert {"eth0", "eth0.5", "eth0.65", "eth0.400", "vif1.0", "vif8.0", "ge1"} <= names
    for path in result.captures:
        fields = tshark("-r", str(path), "-T", "fields", "-e", "frame.interface_name")
        got = set(fields.split())
        assert got == {path.stem}, f"{path.name}: interface names {got}"


def test_uplink_shows_the_three_vlan_tags_and_untagged_frames(demo_out) -> None:
    out, _ = demo_out
    rows = tshark("-r", str(out / "eth0.pcapng"), "-T", "fields", "-e", "vlan.id",
                  "-e", "eth.src").splitlines()
    vids = {r.split("\t")[0] for r in rows}
    assert {"5", "65", "400"} <= vids
    assert "" in vids  # the untagged network (xenbr0) leaves eth0 without a tag
    # VLAN PIFs and VIFs never carry a tag out: Xen tags and untags for the guests. The one
    # tagged frame on vif1.0 is vm1's VLAN-hopping attempt, captured inbound and dropped.
    for name in ("eth0.5", "eth0.400", "vif1.0", "vif5.0"):
        rows = tshark("-r", str(out / f"{name}.pcapng"), "-Y", "vlan", "-T", "fields",
                      "-e", "frame.packet_flags_direction", "-e", "vlan.id").split()
        assert rows == (["0x00000001", "65"] if name == "vif1.0" else [])


def test_timestamps_are_nanosecond_and_direction_is_recorded(demo_out) -> None:
    out, _ = demo_out
    info = tshark("-r", str(out / "vif1.0.pcapng"), "-V", "-c", "1")
    assert "Interface name: vif1.0" in info
    assert "Direction: Inbound" in info or "(inbound)" in info
    epoch = tshark("-r", str(out / "eth0.pcapng"), "-T", "fields", "-e", "frame.time_epoch",
                   "-c", "1").strip()
    assert len(epoch.split(".")[1]) == 9

