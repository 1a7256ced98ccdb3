"""Property test: random write / snapshot / clone / destroy / gc-coalesce / resize sequences on a
file SR against a flat in-memory model; after every step every VDI reads exactly as the model.

Writes are sector-granular and unaligned, so partial bitmap bytes (where some bits of a byte
are set and others must still read from the parent) are exercised on every run.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from storage.errors import StorageError
from storage.sr.sr import SR
from storage.vhd import chain
from storage.vhd import format as fmt

KiB = 1024


class SrModel(RuleBasedStateMachine):
    """An SR and, for each user-visible VDI, the bytes it must read as."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="hvsim-model-"))
        self.sr = SR.create(self.dir / "sr", type_name="file")
        self.sr.driver.block_size = 64 * KiB        # type: ignore[attr-defined]
        self.model: dict[str, bytearray] = {}

    def teardown(self) -> None:
        self.sr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(size=st.integers(64 * KiB, 400 * KiB))
    def first_vdi(self, size: int) -> None:
        v = self.sr.vdi_create("d0", size)
        self.model[v.uuid] = bytearray(v.virtual_size)

    def _pick(self, data: st.DataObject) -> str:
        # By creation order, not uuid order: uuids are random, creation order is replayable.
        return data.draw(st.sampled_from(list(self.model)))

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        u = self._pick(data)
        size = len(self.model[u])
        off = data.draw(st.integers(0, size - 1))
        n = data.draw(st.integers(1, min(3 * 64 * KiB, size - off)))
        payload = data.draw(st.sampled_from([b"\0", b"\xa5", b"z"])) * n
        if data.draw(st.booleans()):
            payload = bytes((off + i) % 251 for i in range(n))
        dev = self.sr.vdi_open(u)
        dev.write(off, payload)
        dev.close()
        self.model[u][off:off + n] = payload

    @precondition(lambda self: len(self.model) < 6)
    @rule(data=st.data(), clone=st.booleans())
    def snapshot(self, data: st.DataObject, clone: bool) -> None:
        u = self._pick(data)
        if self.sr.chain_depth(u) >= 8:
            return
        new = self.sr.vdi_clone(u) if clone else self.sr.vdi_snapshot(u)
        self.model[new.uuid] = bytearray(self.model[u])

    @precondition(lambda self: len(self.model) > 1)
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        u = self._pick(data)
        self.sr.vdi_destroy(u)
        del self.model[u]

    @rule()
    def gc(self) -> None:
        self.sr.gc()
        assert all(len(self.sr.children(v.uuid)) >= 1 for v in self.sr.vdis.values() if v.hidden)

    @rule(data=st.data(), size=st.integers(32 * KiB, 600 * KiB))
    def resize(self, data: st.DataObject, size: int) -> None:
        u = self._pick(data)
        new_size = fmt.round_to_geometry(size)[0]
        cur = self.model[u]
        if new_size < len(cur) and any(cur[new_size:]):
            try:
                self.sr.vdi_resize(u, size)
            except StorageError:
                return
            raise AssertionError("shrink over data was not refused")
        assert self.sr.vdi_resize(u, size) == new_size
        if new_size < len(cur):
            del cur[new_size:]
        else:
            cur.extend(bytes(new_size - len(cur)))

    @rule()
    def reopen(self) -> None:
        self.sr.close()
        self.sr = SR.open(self.sr.path)
        self.sr.driver.block_size = 64 * KiB        # type: ignore[attr-defined]

    @invariant()
    def every_vdi_reads_as_the_model(self) -> None:
        visible = {u for u, v in self.sr.vdis.items() if not v.hidden}
        assert visible == set(self.model)
        for u, want in self.model.items():
            dev = self.sr.vdi_open(u, read_only=True)
            try:
                assert dev.size == len(want)
                assert dev.read(0, dev.size) == bytes(want), f"VDI {u} differs from the model"
            finally:
                dev.close()
            assert chain.check(self.sr.path / self.sr.vdis[u].location) == []


SrModel.TestCase.settings = settings(max_examples=30, stateful_step_count=15, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
TestSrModel = SrModel.TestCase
