"""Chains on files: parent lookup by locators, snapshot, coalesce with journal, corruptions."""
from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from pathlib import Path

import pytest

from storage.errors import ChainError, StorageError
from storage.vhd import chain
from storage.vhd import format as fmt
from storage.vhd.image import VhdImage

MiB = 2**20


def read_all(path: Path) -> bytes:
    img = chain.open_chain(path)
    try:
        return img.read(0, img.size)
    finally:
        img.close()


def test_child_finds_parent_relative_first_even_after_moving_the_directory(
        base_vhd: Path, tmp_path: Path) -> None:
    child = chain.create_image(tmp_path / "child.vhd", parent_path=base_vhd)
    child.write(512, b"kid")
    child.close()
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.move(str(tmp_path), moved)        # absolute locators now point nowhere
    img = chain.open_chain(moved / "child.vhd")
    assert img.depth == 2 and img.parent is not None
    assert img.parent.name == str(moved / "base.vhd")
    assert img.read(0, 4) == b"base" and img.read(512, 3) == b"kid"
    img.close()
    shutil.move(str(moved), tmp_path)


def test_snapshot_is_o1_and_keeps_contents(base_vhd: Path, tmp_path: Path) -> None:
    before = read_all(base_vhd)
    size_before = base_vhd.stat().st_size
    chain.snapshot(base_vhd, tmp_path / "snap-base.vhd")
    assert (tmp_path / "snap-base.vhd").stat().st_size == size_before   # renamed, not copied
    assert base_vhd.stat().st_size < 64 * 1024
    assert read_all(base_vhd) == before
    img = chain.open_chain(base_vhd, read_only=False)
    img.write(0, b"next")
    img.close()
    assert read_all(tmp_path / "snap-base.vhd") == before
    assert read_all(base_vhd)[:4] == b"next"


def test_clone_gives_two_independent_writable_children(base_vhd: Path, tmp_path: Path) -> None:
    before = read_all(base_vhd)
    chain.clone(base_vhd, tmp_path / "gold.vhd", tmp_path / "copy.vhd")
    for p, tag in ((base_vhd, b"ORIG"), (tmp_path / "copy.vhd", b"COPY")):
        img = chain.open_chain(p, read_only=False)
        assert img.read(0, img.size) == before
        img.write(100, tag)
        img.close()
    assert read_all(base_vhd)[100:104] == b"ORIG"
    assert read_all(tmp_path / "copy.vhd")[100:104] == b"COPY"
    assert read_all(tmp_path / "gold.vhd") == before


def test_depth_limit(base_vhd: Path, tmp_path: Path) -> None:
    prev = base_vhd
    for i in range(4):
        p = tmp_path / f"l{i}.vhd"
        chain.create_image(p, parent_path=prev).close()
        prev = p
    assert chain.open_chain(prev, max_depth=5).depth == 5
    with pytest.raises(ChainError, match="deeper than the limit of 4"):
        chain.open_chain(prev, max_depth=4)


def make_chain(tmp_path: Path, base: Path, n: int) -> list[Path]:
    paths = [base]
    for i in range(n):
        p = tmp_path / f"c{i}.vhd"
        img = chain.create_image(p, parent_path=paths[-1])
        img.write(i * 512 + 4096, bytes([65 + i]) * 700)
        img.close()
        paths.append(p)
    return paths


def test_coalesce_merges_and_relinks_grandchildren(base_vhd: Path, tmp_path: Path) -> None:
    paths = make_chain(tmp_path, base_vhd, 3)       # base <- c0 <- c1 <- c2
    views = {p: read_all(p) for p in paths}
    res = chain.coalesce(paths[2])                   # c1 into c0; c2 relinked to c0
    assert res.relinked == [str(paths[3])]
    assert read_all(paths[3]) == views[paths[3]]
    assert read_all(paths[1]) == views[paths[2]]    # c0 now holds c1's view
    assert chain.chain_paths(paths[3]) == [str(paths[3]), str(paths[1]), str(base_vhd)]
    assert not chain.pending_journals(tmp_path)
    assert chain.check(paths[3]) == []


def test_coalesce_refuses_when_parent_has_other_children(base_vhd: Path, tmp_path: Path) -> None:
    a = chain.create_image(tmp_path / "a.vhd", parent_path=base_vhd)
    a.write(0, b"A")
    a.close()
    chain.create_image(tmp_path / "b.vhd", parent_path=base_vhd).close()
    with pytest.raises(ChainError, match="other children"):
        chain.coalesce(tmp_path / "a.vhd")
    chain.coalesce(tmp_path / "a.vhd", force=True)
    assert read_all(base_vhd)[:1] == b"A"


def test_interrupted_coalesce_is_finished_by_recover(base_vhd: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_chain(tmp_path, base_vhd, 3)
    views = {p: read_all(p) for p in paths}
    calls = {"n": 0}
    real = VhdImage.set_parent

    def crash(self: VhdImage, *a: object, **k: object) -> None:
        calls["n"] += 1
        raise OSError("power cut during relink")

    monkeypatch.setattr(VhdImage, "set_parent", crash)
    with pytest.raises(OSError):
        chain.coalesce(paths[2])
    monkeypatch.setattr(VhdImage, "set_parent", real)
    journals = chain.pending_journals(tmp_path)
    assert len(journals) == 1 and json.load(open(journals[0]))["phase"] == "relink"
    assert any("interrupted coalesce" in p for p in chain.check(paths[3]))
    # Every image still reads as before, even mid-coalesce.
    assert all(read_all(p) == views[p] for p in paths[2:])
    chain.recover(tmp_path)
    assert not chain.pending_journals(tmp_path)
    assert read_all(paths[3]) == views[paths[3]]
    assert chain.chain_paths(paths[3])[1] == str(paths[1])


# --- corruptions: each found by check() and refused on open with a clear message -------------

def corrupt_checksum(p: Path, tmp: Path) -> str:
    with open(p, "r+b") as f:
        f.seek(-512 + 100, os.SEEK_END)
        f.write(b"\x01")
    return "'checksum'"


def corrupt_footer_copy(p: Path, tmp: Path) -> str:
    raw = bytearray(p.read_bytes()[:512])
    f = fmt.Footer.unpack(bytes(raw))
    f2 = fmt.Footer(**{**f.__dict__, "timestamp": f.timestamp + 1})
    with open(p, "r+b") as fh:
        fh.write(f2.pack())
    return "footer copy at offset 0 differs"


def bat_entry(p: Path, i: int, value: int) -> None:
    img = chain.open_image(p)
    off = img.header.table_offset + 4 * i  # type: ignore[union-attr]
    img.close()
    with open(p, "r+b") as fh:
        fh.seek(off)
        fh.write(struct.pack(">I", value))


def corrupt_bat_past_eof(p: Path, tmp: Path) -> str:
    bat_entry(p, 1, 0x00FFFFF0)
    return "past the end"


def corrupt_overlap(p: Path, tmp: Path) -> str:
    img = chain.open_image(p)
    first = img.bat[0]
    img.close()
    bat_entry(p, 2, first)
    return "overlaps"


def corrupt_truncate(p: Path, tmp: Path) -> str:
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 512 - 4096)
    return "truncated"


def corrupt_parent_uuid(p: Path, tmp: Path) -> str:
    child = tmp / "child.vhd"
    chain.create_image(child, parent_path=p).close()
    p.unlink()
    chain.create_image(p, size=4 * MiB).close()       # same name, different disk
    return "parent UUID mismatch"


def corrupt_cycle(p: Path, tmp: Path) -> str:
    b = tmp / "b.vhd"
    a = tmp / "a.vhd"
    chain.create_image(b, parent_path=p).close()
    chain.create_image(a, parent_path=b).close()
    img_b = chain.open_image(b, read_only=False)
    img_a = chain.open_image(a)
    img_b.set_parent(img_a, parent_path=str(a), path=str(b))   # b -> a -> b
    img_a.close()
    img_b.parent = None
    img_b.close()
    return "cycle"


def corrupt_footer_copy_uuid(p: Path, tmp: Path) -> str:
    raw = bytearray(p.read_bytes()[:512])
    f = fmt.Footer.unpack(bytes(raw))
    f2 = fmt.Footer(**{**f.__dict__, "uuid": uuid.UUID(int=12345)})
    with open(p, "r+b") as fh:
        fh.write(f2.pack())
    return "footer copy at offset 0 differs"


def test_footer_copy_differing_in_size_or_time_is_reported_and_repaired(base_vhd: Path,
                                                                        tmp_path: Path) -> None:
    """Same disk, other timestamp/size in the copy: what a resize cut between its two footer
    writes leaves. check reports it, the end footer wins, a read-write open repairs the copy."""
    before = read_all(base_vhd)
    needle = corrupt_footer_copy(base_vhd, tmp_path)
    assert any(needle in line for line in chain.check(base_vhd))
    assert read_all(base_vhd) == before
    chain.open_chain(base_vhd, read_only=False).close()
    assert chain.check(base_vhd) == []


@pytest.mark.parametrize("corrupt", [corrupt_checksum, corrupt_footer_copy_uuid,
                                     corrupt_bat_past_eof,
                                     corrupt_overlap, corrupt_truncate, corrupt_parent_uuid,
                                     corrupt_cycle])
def test_corruption_found_by_check_and_refused_on_open(base_vhd: Path, tmp_path: Path,
                                                       corrupt) -> None:
    img = chain.open_image(base_vhd, read_only=False)
    img.write(MiB, b"x" * 10)
    img.write(2 * MiB, b"y" * 10)
    img.close()
    assert chain.check(base_vhd) == []
    needle = corrupt(base_vhd, tmp_path)
    target = {corrupt_parent_uuid: tmp_path / "child.vhd",
              corrupt_cycle: tmp_path / "a.vhd"}.get(corrupt, base_vhd)
    problems = chain.check(target)
    assert problems and any(needle in line for line in problems), problems
    with pytest.raises(StorageError, match=needle.replace("'", ".")):
        chain.open_chain(target).close()


def test_check_reports_lost_footer_but_data_stays_readable(base_vhd: Path) -> None:
    before = read_all(base_vhd)
    with open(base_vhd, "r+b") as fh:
        fh.truncate(base_vhd.stat().st_size - 512)     # crash before the footer landed
    assert any("footer at end of file missing" in p for p in chain.check(base_vhd))
    assert read_all(base_vhd) == before
    chain.open_chain(base_vhd, read_only=False).close()  # read-write open repairs it
    assert chain.check(base_vhd) == []
