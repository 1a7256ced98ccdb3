"""The per-block chain mapping cache behind `VhdImage.read`: every change below a reader (a
write into the leaf or into any image of its chain, a new child, a coalesce and relink, a
discard, a resize) must show in the next read, exactly as an uncached walk would give."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.devices.rawio import MemoryIO
from storage.vhd import chain
from storage.vhd.image import VhdImage

KiB, MiB = 1 << 10, 1 << 20
BS = 64 * KiB                    # small blocks: many block boundaries in a small disk
SIZE = 1 * MiB


def _walk(img: VhdImage, offset: int, length: int) -> bytes:
    """What `img` holds at offset, resolved by the uncached per-sector walk (`map`)."""
    out = b"".join(bytes(n * 512) if io is None else io.pread(o, n * 512).ljust(n * 512, b"\0")
                   for n, io, o in img.map(offset, length))
    head = offset % 512
    return out[head:head + length]


def _base(size: int = SIZE) -> VhdImage:
    return VhdImage.create(MemoryIO(name="base"), size=size, block_size=BS)


def _child(parent: VhdImage, name: str) -> VhdImage:
    return VhdImage.create(MemoryIO(name=name), disk_type="differencing", parent=parent)


def test_write_into_the_leaf_updates_a_cached_block() -> None:
    base = _base()
    base.write(0, b"B" * BS)
    leaf = _child(base, "leaf")
    assert leaf.read(100, 10) == b"B" * 10           # block 0 cached: all from the base
    leaf.write(512, b"L" * 512)                       # the leaf allocates it: mixed now
    assert leaf.read(0, 1536) == b"B" * 512 + b"L" * 512 + b"B" * 512
    leaf.write(0, b"l" * BS)                          # whole block: the leaf's alone
    assert leaf.read(BS - 4, 4) == b"llll"


def test_write_into_a_parent_shows_through_its_children() -> None:
    base = _base()
    mid = _child(base, "mid")
    leaf = _child(mid, "leaf")
    assert leaf.read(3 * BS, 1024) == bytes(1024)     # cached as zeros, three levels down
    base.write(3 * BS, b"base" * 256)
    assert leaf.read(3 * BS, 1024) == b"base" * 256
    mid.write(3 * BS + 512, b"MID!" * 128)            # the second sector only
    assert leaf.read(3 * BS, 1024) == b"base" * 128 + b"MID!" * 128
    base.discard(3 * BS, BS)                          # the base's block unmapped again
    assert leaf.read(3 * BS, 1024) == bytes(512) + b"MID!" * 128


def test_new_child_and_relink_after_coalesce_read_the_same() -> None:
    base = _base()
    base.write(0, b"b" * SIZE)
    mid = _child(base, "mid")
    mid.write(BS + 100, b"m" * 1000)
    leaf = _child(mid, "leaf")
    before = leaf.read(BS, BS)
    snap = _child(leaf, "snap")                       # a snapshot: a new, empty child
    assert snap.read(BS, BS) == before
    mid.copy_into(base)                               # coalesce mid into base, relink leaf
    leaf.set_parent(base, parent_path=None, path=None)
    assert leaf.parent is base
    base.write(BS + 100, b"X" * 10)                   # the old parent no longer matters...
    mid.write(BS + 200, b"Y" * 10)
    assert leaf.read(BS, BS)[100:110] == b"X" * 10    # ...the new one does
    assert leaf.read(BS, BS)[200:210] == b"m" * 10
    assert snap.read(BS, BS)[:100] == b"b" * 100


def test_resize_of_the_base_changes_what_the_leaf_reads_past_it() -> None:
    base = _base(SIZE)
    base.write(SIZE - 512, b"e" * 512)
    leaf = _child(base, "leaf")
    assert leaf.read(SIZE - 512, 512) == b"e" * 512
    base.resize(SIZE + 4 * BS)                        # grown: the leaf keeps its own size
    assert leaf.read(SIZE - 512, 512) == b"e" * 512


def test_files_snapshot_and_coalesce_through_open_chains(tmp_path: Path) -> None:
    path, base = tmp_path / "disk.vhd", tmp_path / "base.vhd"
    img = chain.create_image(path, size=SIZE, block_size=BS)
    img.write(0, b"1" * SIZE)
    img.close()
    chain.snapshot(path, base)
    leaf = chain.open_chain(path, read_only=False)
    assert leaf.read(BS, 4) == b"1111"
    leaf.write(BS, b"2" * 512)
    assert leaf.read(BS, 1024) == b"2" * 512 + b"1" * 512
    leaf.close()
    chain.coalesce(path, remove_child=False)          # leaf into base; the leaf keeps reading
    again = chain.open_chain(path)
    try:
        assert again.read(BS, 1024) == b"2" * 512 + b"1" * 512
    finally:
        again.close()


# --- property: random writes at random depths, snapshots and coalesces against a model -------

_op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 5), st.integers(0, SIZE - 1),
              st.integers(1, 3 * BS), st.integers(0, 255)),
    st.tuples(st.just("read"), st.integers(0, SIZE - 1), st.integers(1, 2 * BS)),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("coalesce")),
    st.tuples(st.just("discard"), st.integers(0, SIZE // BS - 1)),
)


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=1, max_size=40))
def test_chain_reads_match_a_model(ops: list[tuple]) -> None:
    base = _base()
    mid = _child(base, "c1")
    images = [base, mid, _child(mid, "c2")]          # base first, leaf last
    model = [bytearray(SIZE) for _ in images]         # what each image holds, per byte
    held = [bytearray(SIZE) for _ in images]          # 1 where the image holds the byte

    def view() -> bytearray:
        return _view_of(model, held)

    for op in ops:
        kind = op[0]
        if kind == "write":
            _, depth, off, ln, val = op
            k = max(0, len(images) - 1 - depth)       # 0 = the leaf, deeper = parents
            ln = min(ln, SIZE - off)
            images[k].write(off, bytes([val]) * ln)
            model[k][off:off + ln] = bytes([val]) * ln
            lo, hi = off - off % 512, -(-(off + ln) // 512) * 512
            # sectors become held; a partial sector takes the rest from below (read-modify-
            # write of the sector through the chain)
            if k == 0:
                continue                               # dynamic base: unheld reads zeros
            below = _view_of(model[:k], held[:k])
            for s in (lo, hi - 512):
                if not held[k][s]:
                    seg = bytearray(below[s:s + 512])
                    a, b = max(off, s), min(off + ln, s + 512)
                    seg[a - s:b - s] = bytes([val]) * (b - a)
                    model[k][s:s + 512] = seg
            held[k][lo:hi] = b"\1" * (hi - lo)
        elif kind == "read":
            _, off, ln = op
            ln = min(ln, SIZE - off)
            leaf = images[-1]
            now = view()
            want = bytes(now[off:off + ln])
            assert leaf.read(off, ln) == want == _walk(leaf, off, ln)
            inb = off % BS                            # the same piece of every block (cached)
            n = min(ln, BS - inb)
            for blk in range(SIZE // BS):
                assert leaf.read(blk * BS + inb, n) == now[blk * BS + inb:blk * BS + inb + n]
        elif kind == "snapshot" and len(images) < 8:
            images.append(_child(images[-1], f"c{len(images)}"))
            model.append(bytearray(SIZE))
            held.append(bytearray(SIZE))
        elif kind == "coalesce" and len(images) >= 3:
            # merge the leaf's parent into the grandparent and relink the leaf
            p, gp = images[-2], images[-3]
            p.copy_into(gp)
            for i in range(0, SIZE, 512):
                if held[-2][i]:
                    model[-3][i:i + 512] = model[-2][i:i + 512]
                    if len(images) > 3:
                        held[-3][i:i + 512] = b"\1" * 512
            images[-1].set_parent(gp, parent_path=None, path=None)
            del images[-2], model[-2], held[-2]
        elif kind == "discard":
            blk = op[1]
            base.discard(blk * BS, BS)                 # only a dynamic disk unmaps
            model[0][blk * BS:(blk + 1) * BS] = bytes(BS)
    leaf = images[-1]
    assert leaf.read(0, SIZE) == bytes(view())


def _view_of(model: list[bytearray], held: list[bytearray]) -> bytearray:
    """The chain's content: the (dynamic) base, then each child's held sectors over it."""
    out = bytearray(model[0])
    for data, mask in zip(model[1:], held[1:], strict=True):
        for i in range(0, SIZE, 512):
            if mask[i]:
                out[i:i + 512] = data[i:i + 512]
    return out


def test_cache_is_bounded(monkeypatch: object) -> None:
    import storage.vhd.image as image_mod

    img = _base(4 * MiB)
    monkeypatch.setattr(image_mod, "_RESOLVED_MAX", 8)  # type: ignore[attr-defined]
    for blk in range(4 * MiB // BS):
        img.read(blk * BS, 512)
    assert len(img._resolved) <= 8
