"""A crash at any step of a metadata update leaves a VG that opens, in the old or new state."""
from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from storage.devices.rawio import MemoryIO
from storage.lvm import VolumeGroup, pvcreate
from storage.lvm.alloc import check_consistency
from storage.lvm.textfmt import TextHeader, emit_text
from tests.storage.lvm.crashio import Crash, CrashIO, Mode, StepCounter

MiB = 1 << 20
PV_SIZE = 8 * MiB


def pristine() -> list[bytes]:
    """Two PVs holding VG `vg0` with LVs `a` (with data) and `b`, as raw images."""
    ios = [MemoryIO(bytes(PV_SIZE), name=f"pv{i}") for i in range(2)]
    rng = random.Random(3)
    for io in ios:
        pvcreate(io.name, size=PV_SIZE, rng=rng, io=io)
    g = VolumeGroup.create("vg0", ios, extent_size=MiB, rng=rng)
    g.lvcreate("a", 2 * MiB)
    g.lvcreate("b", MiB)
    g.open_lv("a").write(0, b"A" * MiB)
    g.close()
    return [bytes(io.buf) for io in ios]


def state(g: VolumeGroup) -> str:
    return emit_text(g.meta, TextHeader(), "raw")


OPS: dict[str, Callable[[VolumeGroup], object]] = {
    "lvcreate": lambda g: g.lvcreate("c", 3 * MiB),
    "lvextend": lambda g: g.lvextend("b", 4 * MiB),
    "lvreduce": lambda g: g.lvreduce("a", MiB, force=True),
    "lvrename": lambda g: g.lvrename("b", "b2"),
    "lvremove": lambda g: g.lvremove("b"),
    "snapshot": lambda g: g.lvcreate("snap", 2 * MiB, snapshot_of="a", chunk_size=64 << 10),
}


def run(images: list[bytes], op: str, crash_at: int | None, mode: Mode
        ) -> tuple[list[MemoryIO], int]:
    mems = [MemoryIO(img, name=f"pv{i}") for i, img in enumerate(images)]
    counter = StepCounter(crash_at, mode)
    g = VolumeGroup.open_ios("vg0", [CrashIO(m, counter) for m in mems], rng=random.Random(5),
                             now=lambda: 1_800_000_000)
    try:
        OPS[op](g)
    except Crash:
        pass
    return mems, counter.steps


@pytest.mark.parametrize("op", list(OPS))
def test_crash_at_every_step_leaves_old_or_new_vg(op: str) -> None:
    images = pristine()
    old = VolumeGroup.open_ios("vg0", [MemoryIO(i, name=f"pv{n}") for n, i in enumerate(images)])
    old_state, old_seq = state(old), old.meta.seqno
    mems, total = run(images, op, None, "done")
    new = VolumeGroup.open_ios("vg0", mems)
    new_state = state(new)
    assert new.meta.seqno == old_seq + 1 and new_state != old_state
    for mode in ("done", "lost", "torn"):
        seen = set()
        for step in range(total):
            mems, _ = run(images, op, step, mode)  # type: ignore[arg-type]
            g = VolumeGroup.open_ios("vg0", mems)
            check_consistency(g.meta)
            got = state(g)
            assert got in (old_state, new_state), f"{op}: crash at step {step} ({mode})"
            seen.add(got == new_state)
            if "a" in g.lv_names() and got == old_state:
                # the old state's data is intact: nothing was zeroed before the commit
                assert g.open_lv("a").read(0, 16) == b"A" * 16
            if op == "snapshot" and got == new_state:
                assert g.open_lv("snap").read(0, 4) == b"AAAA"  # COW header was durable
        assert seen == {False, True} or (mode == "lost" and seen == {False})
