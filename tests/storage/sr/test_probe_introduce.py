"""`hvsim sr probe`, `sr forget` and `sr introduce` on every SR type: a forgotten SR comes back
whole; an SR whose metadata is lost is found on its storage and every volume, chains
included, becomes a VDI again with its data."""
from __future__ import annotations

import json
import random
import xml.dom.minidom
from pathlib import Path

import pytest

from storage.sr.sr import SR
from storage.vhd.chain import create_image
from tests.storage.sr.conftest import SR_TYPES, hv, make_sr

MiB = 1 << 20


def _populate(sr: Path, tmp: Path) -> dict[str, bytes]:
    """A VDI with data, a snapshot of it, more data after, and an empty VDI: uuid → content."""
    rng = random.Random(7)
    u = hv("vdi", "create", "--sr", sr, "--size", "8M", "--name", "disk0").strip()
    f = tmp / "data.bin"
    f.write_bytes(rng.randbytes(MiB))
    hv("vdi", "write", "--sr", sr, u, "--offset", 3 * MiB, "--input", f)
    snap = hv("vdi", "snapshot", "--sr", sr, u).strip()
    f.write_bytes(rng.randbytes(4096))
    hv("vdi", "write", "--sr", sr, u, "--offset", 0, "--input", f)
    empty = hv("vdi", "create", "--sr", sr, "--size", "4M", "--name", "empty").strip()
    s = SR.open(sr)
    try:
        out = {}
        for v in (u, snap, empty):
            dev = s.vdi_open(v, read_only=True)
            try:
                out[v] = dev.read(0, dev.size)
            finally:
                dev.close()
        return out
    finally:
        s.close()


def _contents(sr: Path, uuids: list[str]) -> dict[str, bytes]:
    s = SR.open(sr)
    try:
        out = {}
        for v in uuids:
            dev = s.vdi_open(v, read_only=True)
            try:
                out[v] = dev.read(0, dev.size)
            finally:
                dev.close()
        return out
    finally:
        s.close()


@pytest.mark.parametrize("kind", SR_TYPES)
def test_forget_then_introduce_brings_the_sr_back_with_its_records(tmp_path: Path,
                                                                  kind: str) -> None:
    sr = make_sr(tmp_path / "sr", kind)
    data = _populate(sr, tmp_path)
    s = SR.open(sr)
    uuid, records = s.uuid, {k: (v.name_label, v.parent, v.hidden) for k, v in s.vdis.items()}
    vbd = s.vbd_create(next(iter(data)), "vm1")
    s.vbd_plug(vbd.uuid)
    err = hv("sr", "forget", sr, code=2)
    assert "attached to VM vm1" in err and "unplug it first" in err
    s.vbd_unplug(vbd.uuid)
    s.vbd_destroy(vbd.uuid)
    s.close()
    assert "forgot SR" in hv("sr", "forget", sr)
    assert "forgotten" in hv("sr", "probe", sr)
    err = hv("vdi", "list", "--sr", sr, code=2)
    assert "was forgotten" in err and "sr introduce" in err
    out = hv("sr", "introduce", sr)
    assert out.splitlines()[0] == uuid
    s = SR.open(sr)
    try:
        assert {k: (v.name_label, v.parent, v.hidden) for k, v in s.vdis.items()} == records
    finally:
        s.close()
    assert _contents(sr, list(data)) == data
    assert "already introduced" in hv("sr", "introduce", sr, code=2)


@pytest.mark.parametrize("kind", SR_TYPES)
def test_an_sr_whose_metadata_is_lost_is_probed_and_introduced_from_its_volumes(
        tmp_path: Path, kind: str) -> None:
    sr = make_sr(tmp_path / "sr", kind)
    data = _populate(sr, tmp_path)
    s = SR.open(sr)
    uuid = s.uuid
    parents = {k: v.parent for k, v in s.vdis.items()}
    hidden = {k for k, v in s.vdis.items() if v.hidden}
    s.close()
    (sr / "sr.json").unlink()
    probe_path = sr
    if kind != "file":           # the SR directory lost everything but the PV
        (sr / "lvm.json").unlink()
        probe_path = sr / "pv0.img"
    text = hv("sr", "probe", probe_path)
    assert f"type {kind}" in text and "not introduced" in text
    if kind == "file":
        assert "uuid unknown" in text and "4 volumes" in text   # with the base copy
    else:
        assert f"SR {uuid}" in text
        doc = xml.dom.minidom.parseString(hv("sr", "probe", probe_path, "--xml"))
        (el,) = doc.getElementsByTagName("SR")
        assert el.getElementsByTagName("UUID")[0].firstChild.data == uuid
        assert el.getElementsByTagName("Devlist")[0].firstChild.data.endswith("pv0.img")
    args = ["sr", "introduce", sr, "--name", "back"]
    if kind != "file":
        args += ["--device-config", f"device={sr / 'pv0.img'}"]
        assert "not" in hv(*args[:3], "--uuid", "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                           *args[3:], code=2)
    out = hv(*args)
    if kind != "file":
        assert out.splitlines()[0] == uuid
    s = SR.open(sr)
    try:
        assert s.name_label == "back"
        assert set(data) <= set(s.vdis)                   # every volume kept its uuid
        assert {k: v.parent for k, v in s.vdis.items()} == parents
        assert {k for k, v in s.vdis.items() if v.hidden} == hidden
    finally:
        s.close()
    assert _contents(sr, list(data)) == data              # the empty VDI was not deleted
    assert json.loads(hv("sr", "probe", sr, "--json"))[0]["state"] == "sr"


def test_a_chain_of_orphans_is_introduced_parents_first(tmp_path: Path) -> None:
    """A child whose name sorts before its parent's is still recovered with its parent."""
    d = tmp_path / "sr"
    d.mkdir()
    parent, child = "f" * 8 + "-1111-4111-8111-" + "1" * 12, "0" * 8 + "-2222-4222-8222-" + "2" * 12
    img = create_image(d / f"{parent}.vhd", size=4 * MiB)
    img.write(0, b"base")
    img.close()
    create_image(d / f"{child}.vhd", parent_path=d / f"{parent}.vhd").close()
    hv("sr", "introduce", d, "--type", "file")
    s = SR.open(d)
    try:
        assert s.vdi(child).parent == parent and not s.vdi(child).hidden
        assert s.vdi(parent).hidden and s.vdi(parent).read_only
        dev = s.vdi_open(child, read_only=True)
        try:
            assert dev.read(0, 4) == b"base"
        finally:
            dev.close()
    finally:
        s.close()


def test_probe_and_introduce_say_what_is_wrong(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no SR found" in hv("sr", "probe", empty, code=1)
    assert "no such file" in hv("sr", "probe", tmp_path / "nope", code=2)
    assert "no lvhd SR volume group" in hv("sr", "introduce", empty, "--type", "lvhd", code=2)
    junk = tmp_path / "junk.img"
    junk.write_bytes(bytes(MiB))
    assert "no SR found" in hv("sr", "probe", junk, code=1)
    assert "not a directory" in hv("sr", "introduce", junk, code=2)
    out = hv("sr", "introduce", tmp_path / "nope", code=2)
    assert "nope: no such directory" in out and "not a directory" not in out
