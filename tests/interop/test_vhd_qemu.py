"""Our VHDs against QEMU's: images made by qemu-img/qemu-io read identically through hvsim,
and images made by hvsim convert with qemu-img to exactly the bytes we wrote."""
from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from storage.vhd import chain

pytestmark = pytest.mark.interop
MiB = 2**20


def run(*args: object) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True,
                          text=True).stdout


def qemu_info(path: Path) -> dict:
    return json.loads(run("qemu-img", "info", "--output=json", "-f", "vpc", path))


def qemu_raw(path: Path, out: Path) -> bytes:
    run("qemu-img", "convert", "-f", "vpc", "-O", "raw", path, out)
    return out.read_bytes()


def hvsim_export(path: Path, out: Path) -> bytes:
    img = chain.open_chain(path)
    try:
        chain.export(img, out)
    finally:
        img.close()
    return out.read_bytes()


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_qemu_made_image_reads_identically(tmp_path: Path, subformat: str) -> None:
    p = tmp_path / "q.vhd"
    run("qemu-img", "create", "-q", "-f", "vpc", "-o", f"subformat={subformat}", p, "24M")
    cmds = ["write -P 0x11 0 4k", "write -P 0x22 1536 512", "write -P 0x33 5M 1M",
            "write -P 0x44 23M 512k", "write -z 5M 4k"]
    for c in cmds:
        run("qemu-io", "-f", "vpc", "-c", c, p)
    img = chain.open_image(p)
    assert img.size == qemu_info(p)["virtual-size"]
    assert img.footer.creator_app == b"qemu" and img.disk_type == subformat
    img.close()
    assert chain.check(p) == []
    assert hvsim_export(p, tmp_path / "ours.raw") == qemu_raw(p, tmp_path / "qemu.raw")


@pytest.mark.parametrize(("kind", "size", "block"), [("dynamic", 40 * MiB, 2 * MiB),
                                                     ("dynamic", 9 * MiB + 1234, 512 * 1024),
                                                     ("fixed", 5 * MiB, 0)])
def test_hvsim_made_image_converts_to_exactly_our_bytes(tmp_path: Path, kind: str, size: int,
                                                        block: int) -> None:
    p = tmp_path / "ours.vhd"
    img = chain.create_image(p, size=size, disk_type=kind, block_size=block or 2 * MiB)
    rng = random.Random(7)
    model = bytearray(img.size)
    for _ in range(40):
        off = rng.randrange(img.size - 70_000)
        data = rng.randbytes(rng.randrange(1, 70_000))
        img.write(off, data)
        model[off:off + len(data)] = data
    img.close()
    info = qemu_info(p)
    assert info["virtual-size"] == len(model) >= size     # qemu-img sees our size exactly
    assert qemu_raw(p, tmp_path / "q.raw") == bytes(model)
    # And qemu-io writing into our image is read back by us.
    run("qemu-io", "-f", "vpc", "-c", "write -P 0x5a 3M 8k", p)
    model[3 * MiB:3 * MiB + 8192] = b"\x5a" * 8192
    assert hvsim_export(p, tmp_path / "back.raw") == bytes(model)


@pytest.mark.parametrize("size", ["64M", "1G", "10G", "200G"])
def test_qemu_img_info_reports_our_virtual_size(tmp_path: Path, size: str) -> None:
    ours, theirs = tmp_path / "ours.vhd", tmp_path / "theirs.vhd"
    from storage.cli.vhd import parse_size

    img = chain.create_image(ours, size=parse_size(size))
    img.close()
    run("qemu-img", "create", "-q", "-f", "vpc", theirs, size)
    assert qemu_info(ours)["virtual-size"] == img.size == qemu_info(theirs)["virtual-size"]
    assert os.path.getsize(ours) < MiB                   # sparse: metadata only


@pytest.mark.parametrize(("creator", "sized_by"), [(b"tap\0", "current_size"),
                                                    (b"win ", "current_size"),
                                                    (b"vpc ", "geometry"),
                                                    (b"qemu", "geometry")])
def test_creator_quirks_agree_with_qemu(tmp_path: Path, creator: bytes, sized_by: str) -> None:
    """Images from XenServer (tap), Hyper-V (win ), Virtual PC and old QEMU whose current_size
    is not a whole geometry: we pick the same size QEMU does."""
    from storage.vhd import format as fmt

    p = tmp_path / "other.vhd"
    chain.create_image(p, size=64 * MiB).close()          # geometry covers 67,125,248 bytes
    raw = bytearray(p.read_bytes())
    f = fmt.Footer.unpack(bytes(raw[-512:]))
    f = fmt.Footer(**{**f.__dict__, "creator_app": creator, "current_size": 64 * MiB})
    raw[:512] = raw[-512:] = f.pack()
    p.write_bytes(raw)
    want = 64 * MiB if sized_by == "current_size" else f.chs_size
    img = chain.open_image(p)
    assert img.size == want == qemu_info(p)["virtual-size"]
    img.close()


def test_coalescing_into_a_qemu_made_parent_keeps_it_readable_by_qemu(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    run("qemu-img", "create", "-q", "-f", "vpc", base, "16M")
    run("qemu-io", "-f", "vpc", "-c", "write -P 0x61 0 3M", base)
    img = chain.create_image(child, parent_path=base)
    img.write(MiB + 7, b"child data, unaligned")
    img.write(9 * MiB, b"\x62" * 70_000)                   # a block QEMU never allocated
    expected = img.read(0, img.size)
    img.close()
    chain.coalesce(child)
    assert qemu_raw(base, tmp_path / "flat.raw") == expected
    assert chain.check(base) == [] and not child.exists()   # the merged child is deleted
