"""CBT under power cuts (the CrashIO harness): a block whose data reached the disk, or whose
write was acknowledged, is always set in the CBT bitmap after the cut, whatever step the power
failed on, in the ordered model and (with barriers, an SR with `sync`) the volatile-cache one."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._rel.crashio import CrashIO, PowerCut, PowerPlan
from storage.devices.rawio import FileIO
from storage.sr.cbt import BLOCK, CbtDevice, CbtLog
from storage.vhd.image import VhdImage

KiB = 1024
SIZE = 4 * 1024 * KiB


def _blocks(off: int, n: int) -> set[int]:
    return set(range(off // BLOCK, (off + n - 1) // BLOCK + 1))


def _set_bits(bm: bytes) -> set[int]:
    return {i for i in range(len(bm) * 8) if bm[i // 8] & (0x80 >> (i % 8))}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 150 * KiB),
                                 st.booleans()), min_size=1, max_size=8),
       cut=st.integers(1, 80), volatile=st.booleans(), seed=st.integers(0, 2**16))
def test_a_block_written_before_a_cut_is_in_the_bitmap(
        writes: list[tuple[int, int, bool]], cut: int, volatile: bool, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hvsim-cbt-crash-") as d:
        disk, logf = Path(d) / "d.vhd", Path(d) / "d.cbtlog"
        VhdImage.create(FileIO(disk, create=True), size=SIZE, block_size=256 * KiB).close()
        CbtLog.create(FileIO(logf, create=True), SIZE).close()
        plan = PowerPlan(cut_at=cut, volatile=volatile, torn=True, seed=seed)
        files = [FileIO(disk), FileIO(logf)]
        img = VhdImage.open(CrashIO(files[0], plan), barriers=volatile)
        dev = CbtDevice(img, CbtLog.open(CrashIO(files[1], plan), barriers=volatile))
        acked: set[int] = set()
        pending: set[int] = set()
        try:
            for off, n, flush in writes:
                n = min(n, SIZE - off)
                dev.write(off, bytes([0x5A]) * n)
                pending |= _blocks(off, n)
                if not volatile or flush:
                    if volatile:
                        dev.flush()
                    acked |= pending
                    pending = set()
        except PowerCut:
            pass
        for f in files:               # the machine is off: its open files go with it
            f.close()
        bits = _set_bits(CbtLog.open(FileIO(logf, writable=False)).bitmap)
        assert acked <= bits
        after = VhdImage.open(FileIO(disk, writable=False), read_only=True)
        try:
            landed = {b for b in range(SIZE // BLOCK) if any(after.read(b * BLOCK, BLOCK))}
        finally:
            after.close()
        assert landed <= bits, f"data reached blocks {sorted(landed - bits)} unlogged"
