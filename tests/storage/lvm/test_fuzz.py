"""Hostile metadata: mutated text, labels and metadata-area headers give LvmError, never another
exception, and a VG whose copies are damaged opens from a good copy or says why not."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.devices.rawio import MemoryIO
from storage.errors import LvmError
from storage.lvm import VolumeGroup, pvcreate
from storage.lvm.ondisk import unpack_label, unpack_mda_header
from storage.lvm.textfmt import emit_text, parse_text
from tests.storage.lvm.test_textfmt import sample_vg

TEXT = emit_text(*sample_vg(), "file")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(TEXT) - 1), st.integers(0, 3),
                          st.sampled_from(list('{}[]=",#\n \t0a-9x\\'))), min_size=1, max_size=6))
def test_mutated_text_is_parsed_or_refused_with_lvm_error(edits) -> None:
    text = list(TEXT)
    for pos, op, ch in edits:
        pos = min(pos, len(text) - 1)
        if op == 0:
            text[pos] = ch
        elif op == 1:
            text.insert(pos, ch)
        elif op == 2:
            del text[pos]
        else:
            del text[pos:pos + 40]
        if not text:
            text = ["x"]
    try:
        parse_text("".join(text))
    except LvmError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=512, max_size=512), st.booleans())
def test_random_sectors_are_refused_with_lvm_error(sector: bytes, as_label: bool) -> None:
    buf = bytearray(sector)
    if as_label:
        buf[:8] = b"LABELONE"
    try:
        unpack_label(bytes(buf)) if as_label else unpack_mda_header(bytes(buf))
    except LvmError:
        pass


def test_vg_with_every_copy_damaged_is_a_clear_error() -> None:
    io = MemoryIO(bytes(16 << 20), name="pv0")
    pvcreate("pv0", size=16 << 20, io=io, rng=random.Random(1))
    g = VolumeGroup.create("vgd", [io], rng=random.Random(2))
    g.lvcreate("a", 4 << 20)
    for h in g.devices["pv0"].mdas:
        loc = h.locns[0]
        io.pwrite(h.start + loc.offset + 20, b"\xff\xfe")
    try:
        VolumeGroup.open_ios("vgd", [io])
    except LvmError as exc:
        assert "volume group 'vgd' not found" in str(exc)
    else:
        raise AssertionError("a VG with no valid metadata copy opened")


def test_absurd_nesting_is_a_syntax_error_not_a_crash() -> None:
    try:
        parse_text("a {" * 100_000)
    except LvmError as exc:
        assert "nested deeper" in str(exc)
    else:
        raise AssertionError("accepted")
