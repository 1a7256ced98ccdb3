"""Several processes on one SR at once, and SIGKILL in the middle of gc/snapshot/clone.

`run_concurrent`: N worker processes (`python -m bench._rel.concurrency worker ...`) each own a
VDI and do a seeded mix of write (through a plugged VBD, with a known pattern), snapshot,
clone, destroy and gc on one SR. Conflicts between them (the SR lock, image locks, attached
VDIs) may refuse an operation with one line, never corrupt one. Each worker keeps the model of
its VDIs; afterwards `sr scan` must find nothing out of step and every VDI must read exactly
as its model says.

`sigkill_loop`: a worker doing gc/snapshot/clone is SIGKILLed at a random moment, round after
round; the next `SR.open` recovers, and every VDI must still match the model of the operations
that had finished (an interrupted snapshot/clone may or may not have happened, as a unit).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import StorageError

MiB = 2**20
VDI_SIZE = 4 * MiB
CHUNK = 64 * 1024
KINDS = ("file", "lvm", "lvhd")


def pattern(tag: int) -> bytes:
    """The 64 KiB a write with `tag` leaves (distinct per tag, cheap to rebuild)."""
    return tag.to_bytes(8, "big") * (CHUNK // 8)


def expected(model: dict[str, int], size: int) -> bytes:
    """A VDI's bytes from its model {offset: tag}."""
    buf = bytearray(size)
    for off, tag in model.items():
        o = int(off)
        buf[o:o + CHUNK] = pattern(tag)
    return bytes(buf)


def new_sr(path: Path, kind: str) -> str:
    """Create an SR of `kind` at `path`; returns its uuid."""
    from storage.sr.sr import SR

    cfg = {"size": str(1024 * MiB)} if kind != "file" else {}   # room: a full VG is item 7
    return SR.create(path, type_name=kind, name_label=f"concurrency {kind}",
                     device_config=cfg).uuid


# --- the worker (its own process) ----------------------------------------------------------------

def _write(sr: Any, uuid: str, model: dict[str, dict[str, int]], rng: random.Random,
           tag: int) -> None:
    vbd = sr.vbd_create(uuid, f"vm-{uuid[:8]}")
    try:
        dev = sr.vbd_plug(vbd.uuid)
        try:
            for _ in range(rng.randint(1, 4)):
                off = rng.randrange(0, VDI_SIZE // CHUNK) * CHUNK
                dev.write(off, pattern(tag))
                model[uuid][str(off)] = tag
                tag += 1
            dev.flush()
        finally:
            sr.vbd_unplug(vbd.uuid)
    finally:
        sr.vbd_destroy(vbd.uuid)


def worker(sr_path: str, idx: int, seed: int, ops: int, mix: str) -> None:
    """One process's share of the workload; prints its model and counts as JSON at the end."""
    from storage.errors import StorageError
    from storage.sr.sr import SR

    rng = random.Random(seed * 1000 + idx)
    sr = SR.open(sr_path)
    own = sr.vdi_create(f"w{idx}", VDI_SIZE).uuid
    model: dict[str, dict[str, int]] = {own: {}}
    extra: list[str] = []                  # this worker's snapshots and clones
    done: dict[str, int] = {}
    refused: dict[str, int] = {}
    tag = (idx + 1) << 40
    choices = mix.split(",")
    for _ in range(ops):
        op = rng.choice(choices)
        try:
            sr = SR.open(sr_path)
            if op == "write":
                target = rng.choice([own] + [u for u in extra if not sr.vdi(u).read_only])
                _write(sr, target, model, rng, tag)
                tag += 8
            elif op in ("snapshot", "clone"):
                src = own
                new = (sr.vdi_snapshot if op == "snapshot" else sr.vdi_clone)(src).uuid
                model[new] = dict(model[src])
                extra.append(new)
            elif op == "destroy" and extra:
                victim = extra.pop(rng.randrange(len(extra)))
                try:
                    sr.vdi_destroy(victim)
                except StorageError:
                    extra.append(victim)
                    raise
                del model[victim]
            elif op == "gc":
                sr.gc()
            else:
                continue
            done[op] = done.get(op, 0) + 1
        except StorageError as exc:
            key = f"{op}: {type(exc).__name__}"
            refused[key] = refused.get(key, 0) + 1
        print(json.dumps({"progress": model}), flush=True)
    print(json.dumps({"model": model, "done": done, "refused": refused}), flush=True)


def _spawn(sr_path: Path, idx: int, seed: int, ops: int, mix: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-m", "bench._rel.concurrency", "worker",
                             str(sr_path), str(idx), str(seed), str(ops), mix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


# --- checks ------------------------------------------------------------------------------------

@dataclass
class ConcurrencyResult:
    """What one run did and found."""

    kind: str
    workers: int
    done: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    vdis_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    scan_clean: bool = False
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every VDI matched its model, scan found nothing, no worker crashed."""
        return self.scan_clean and not self.mismatches and not self.errors


def check_sr(sr_path: Path, model: dict[str, dict[str, int]], res: ConcurrencyResult, *,
             maybe: dict[str, list[dict[str, int]]] | None = None) -> None:
    """`sr scan` + read every VDI whole and compare with the model. `maybe`: VDIs an
    interrupted operation may or may not have made, with the contents each may have."""
    from storage.sr.sr import SR

    sr = SR.open(sr_path)
    report = sr.scan()
    res.scan_clean = report.clean
    if not report.clean:
        res.mismatches.append(f"sr scan not clean: {report}")
    visible = {u for u, v in sr.vdis.items() if not v.hidden}
    maybe = maybe or {}
    for u in sorted(visible - set(model) - set(maybe)):
        res.mismatches.append(f"VDI {u} exists but no worker made it")
    for u in sorted(set(model) | set(maybe)):
        if u not in visible:
            if u in model:
                res.mismatches.append(f"VDI {u} of the model is gone")
            continue
        dev = sr.vdi_open(u, read_only=True)
        try:
            got = dev.read(0, VDI_SIZE)
        finally:
            dev.close()
        res.vdis_checked += 1
        wants = [model[u]] if u in model else maybe[u]
        if not any(got == expected(m, VDI_SIZE) for m in wants):
            want = expected(wants[0], VDI_SIZE)
            first = next((i for i in range(VDI_SIZE) if got[i] != want[i]), -1)
            res.mismatches.append(f"VDI {u}: differs from its model (first at byte {first})")


def run_concurrent(kind: str, *, workers: int = 3, ops: int = 12, seed: int = 1,
                   mix: str = "write,write,snapshot,clone,destroy,gc") -> ConcurrencyResult:
    """`workers` processes on one SR of `kind` at once; see the module doc."""
    res = ConcurrencyResult(kind, workers)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"hvsim-conc-{kind}-") as d:
        sr_path = Path(d) / "sr"
        new_sr(sr_path, kind)
        procs = [_spawn(sr_path, i, seed, ops, mix) for i in range(workers)]
        model: dict[str, dict[str, int]] = {}
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=600)
            last = [ln for ln in out.splitlines() if ln.startswith('{"model"')]
            if p.returncode != 0 or not last:
                res.errors.append(f"worker {i} exited {p.returncode}: {err.strip()[-300:]}")
                continue
            data = json.loads(last[-1])
            model.update(data["model"])
            for k, v in data["done"].items():
                res.done[k] = res.done.get(k, 0) + v
            for k, v in data["refused"].items():
                res.refused[k] = res.refused.get(k, 0) + v
        if not res.errors:
            check_sr(sr_path, model, res)
    res.seconds = round(time.perf_counter() - t0, 1)
    return res


def sigkill_loop(kind: str, *, rounds: int = 6, seed: int = 7) -> ConcurrencyResult:
    """SIGKILL a gc/snapshot/clone worker at a random moment, `rounds` times; after each,
    recovery (`SR.open`) and `sr scan` must leave every VDI equal to its model. Between
    rounds this process writes a known pattern into every writable VDI."""
    from storage.sr.sr import SR

    rng = random.Random(seed)
    res = ConcurrencyResult(f"{kind} (SIGKILL)", 0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"hvsim-kill-{kind}-") as d:
        sr_path = Path(d) / "sr"
        new_sr(sr_path, kind)
        model: dict[str, dict[str, int]] = {}
        tag = 1 << 50
        for r in range(rounds):
            p = _spawn(sr_path, r, seed, 200, "snapshot,clone,gc")  # outlives the kill
            time.sleep(rng.uniform(0.6, 2.5))         # python start-up is ~0.5 s
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                res.done["killed"] = res.done.get("killed", 0) + 1
            else:
                res.done["finished before the kill"] = res.done.get(
                    "finished before the kill", 0) + 1
            out, _ = p.communicate(timeout=600)
            lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
            mine: dict[str, dict[str, int]] = {}
            if lines:
                mine = lines[-1].get("model") or lines[-1]["progress"]
                model.update(mine)
            res.workers = r + 1
            sr = SR.open(sr_path)                     # recovery of whatever was cut
            adopted = sr.scan().adopted               # volumes made before sr.json knew
            if adopted:                               # (XenServer's sr-scan introduces them)
                res.done["orphans adopted by scan"] = res.done.get(
                    "orphans adopted by scan", 0) + len(adopted)
            visible = {u for u, v in sr.vdis.items() if not v.hidden}
            # the op in flight may have landed without its line: a snapshot or clone of the
            # worker's VDI (reads as it did), or the worker's own new, empty VDI
            maybe = {u: [*mine.values(), {}] for u in visible - set(model)}
            before = len(res.mismatches)
            check_sr(sr_path, model, res, maybe=maybe)
            if len(res.mismatches) > before:
                break
            sr = SR.open(sr_path)
            for u in sorted(visible - set(model)):   # adopt them with what they hold
                dev = sr.vdi_open(u, read_only=True)
                got = dev.read(0, VDI_SIZE)
                dev.close()
                model[u] = next(m for m in maybe[u] if got == expected(m, VDI_SIZE))
            for u in sorted(model):
                v = sr.vdis.get(u)
                if v is None or v.read_only or v.hidden:
                    continue
                try:
                    dev = sr.vdi_open(u)
                except StorageError as exc:     # a full VG cannot inflate the leaf: refused
                    res.refused["write (no space)"] = res.refused.get("write (no space)", 0) + 1
                    if "insufficient free space" not in str(exc):
                        raise
                    continue
                off = rng.randrange(0, VDI_SIZE // CHUNK) * CHUNK
                dev.write(off, pattern(tag))
                dev.close()
                model[u] = {**model[u], str(off): tag}
                tag += 1
    res.seconds = round(time.perf_counter() - t0, 1)
    return res


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit("usage: python -m bench._rel.concurrency worker SR IDX SEED OPS MIX")
