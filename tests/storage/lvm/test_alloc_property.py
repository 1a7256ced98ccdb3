"""Random create/extend/reduce/remove/rename sequences never double-allocate an extent."""
from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.devices.rawio import MemoryIO
from storage.errors import LvmError
from storage.lvm import VolumeGroup, pvcreate
from storage.lvm.alloc import check_consistency, free_extents, used_areas

MiB = 1 << 20
EXT = 256 << 10  # small extents keep the PVs small

ops = st.lists(st.tuples(
    st.sampled_from(["create", "create_striped", "extend", "reduce", "reduce_force", "remove",
                     "rename"]),
    st.integers(0, 5),      # which LV
    st.integers(1, 14),     # extents
), min_size=1, max_size=30)


def stamp(name: str, le: int) -> bytes:
    return f"{name}:{le};".encode().ljust(32, b".")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(1, 3))
def test_free_space_is_never_double_allocated(steps, n_pvs: int) -> None:
    ios = [MemoryIO(bytes(4 * MiB), name=f"pv{i}") for i in range(n_pvs)]
    rng = random.Random(0)
    for io in ios:
        pvcreate(io.name, size=4 * MiB, io=io, rng=rng, metadata_copies=1)
    g = VolumeGroup.create("vg0", ios, extent_size=EXT, rng=rng)
    total = sum(p.pe_count for p in g.meta.pvs)
    lvs: dict[str, int] = {}  # name -> extents; each extent's first bytes carry a stamp
    serial = 0
    for op, which, count in steps:
        names = sorted(lvs)
        target = names[which % len(names)] if names else None
        free = free_extents(g.meta)
        try:
            if op in ("create", "create_striped") or target is None:
                serial += 1
                name = f"lv{serial}"
                if op == "create_striped":
                    count = max(2, count // 2 * 2)
                    g.lvcreate(name, count * EXT, stripes=2, stripe_size=64 << 10)
                else:
                    g.lvcreate(name, count * EXT)
                lvs[name] = count
                dev = g.open_lv(name)
                for le in range(count):
                    dev.write(le * EXT, stamp(name, le))
            elif op == "extend":
                g.lvextend(target, (lvs[target] + count) * EXT)
                grown = g.lv_size(target) // EXT  # striped LVs grow by whole stripes
                assert grown >= lvs[target] + count
                dev = g.open_lv(target)
                for le in range(lvs[target], grown):
                    dev.write(le * EXT, stamp(target, le))
                lvs[target] = grown
            elif op in ("reduce", "reduce_force"):
                new = max(1, lvs[target] - count)
                if any(len(s.stripes) > 1 for s in g.meta.lv(target).segments):
                    new = max(2, new // 2 * 2)  # striped segments shrink by whole stripes
                g.lvreduce(target, new * EXT, force=op == "reduce_force")
                assert op == "reduce_force", "a reduce that cuts stamped data must be refused"
                lvs[target] = new
            elif op == "remove":
                g.lvremove(target)
                del lvs[target]
            else:
                serial += 1
                g.lvrename(target, f"lv{serial}")
                new_name = f"lv{serial}"
                lvs[new_name] = lvs.pop(target)
                dev = g.open_lv(new_name)
                for le in range(lvs[new_name]):
                    dev.write(le * EXT, stamp(new_name, le))
        except LvmError as exc:
            msg = str(exc)
            assert (("insufficient free space" in msg and free < count)
                    or "contiguous space" in msg
                    or "multiples of 2" in msg
                    or ("would destroy data" in msg and op == "reduce")
                    or "not smaller" in msg), msg
        check_consistency(g.meta)
        used = sum(a.count for a, _ in used_areas(g.meta))
        assert used + free_extents(g.meta) == total
        assert used == sum(lvs.values())
        for name, n in lvs.items():  # no LV's extent was handed to another one
            dev = g.open_lv(name)
            for le in range(n):
                assert dev.read(le * EXT, 32) == stamp(name, le)
    reopened = VolumeGroup.open_ios("vg0", ios)
    assert {lv: reopened.lv_size(lv) // EXT for lv in reopened.lv_names()} == lvs
