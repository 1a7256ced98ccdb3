"""Coverage-guided fuzzing with atheris (optional; not a dependency, not in CI).

    pip install atheris        # or: pip install --target DIR atheris; PYTHONPATH=DIR
    python -m bench._rel.atheris_run TARGET [SECONDS]

TARGET is one of `TARGETS` below: raw bytes straight into a parser of outside input, with the
same contract as the hypothesis targets (a result or our typed one-line error). atheris
instruments our modules' bytecode and evolves inputs toward new branches, which finds paths a
grammar does not think of; a crasher is printed and saved by libFuzzer as `crash-<sha1>`.
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["netsim", "storage"]):
    from netsim.lab.topology import parse_topology
    from netsim.scenario.model import parse_scenario
    from netsim.vds.transport.batch import decode_batch
    from netsim.vds.vdsconfig import VdsConfig
    from netsim.wire import frame as fr
    from netsim.wire.filters import compile_filter
    from netsim.wire.pcapread import read_capture
    from storage.devices.rawio import MemoryIO
    from storage.lvm.ondisk import unpack_label, unpack_mda_header
    from storage.lvm.textfmt import parse_text
    from storage.vhd.image import VhdImage

from bench._rel.fuzz import expect_typed

_TMP = tempfile.mkdtemp(prefix="hvsim-atheris-")


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _vhd(data: bytes) -> None:
    img = VhdImage.open(MemoryIO(data, name="fuzz.vhd"), read_only=True)
    if img.size <= 64 << 20:
        img.read(0, min(img.size, 1 << 20))
        img.parent_locators()


def _pcap(data: bytes) -> None:
    path = os.path.join(_TMP, "f.pcap")
    with open(path, "wb") as f:
        f.write(data)
    for _ in read_capture(path):
        pass


TARGETS: dict[str, Callable[[bytes], object]] = {
    "frame": lambda d: fr.validate(d),
    "filter": lambda d: compile_filter(_text(d)),
    "pcap": _pcap,
    "scenario": lambda d: parse_scenario(_text(d), "fuzz.yaml"),
    "topology": lambda d: parse_topology(_text(d), "fuzz.yaml"),
    "batch": decode_batch,
    "vds": lambda d: VdsConfig.from_json(d),
    "lvm-text": lambda d: parse_text(d),
    "lvm-label": lambda d: (unpack_label(d[:512].ljust(512, b"\0")),
                            unpack_mda_header(d[:512].ljust(512, b"\0"))),
    "vhd": _vhd,
}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "frame"
    seconds = sys.argv[2] if len(sys.argv) > 2 else "30"
    fn = TARGETS[name]

    def one(data: bytes) -> None:
        try:
            fn(data)
        except Exception as exc:  # only our typed errors may escape a parser
            expect_typed(exc, name)

    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-print_final_stats=1"], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
