"""The layers of DESIGN.md section 1 hold: a module imports only modules of its own layer or of
the layers below it (checked on every `import` statement, including ones inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: layer ranks, lowest first; a module may import its own package or anything of lower rank
NETSIM = {
    "netsim.errors": 0, "netsim.clock": 0,
    "netsim.wire": 1,
    "netsim.dataplane": 2,
    "netsim.lab": 3,
    "netsim.vds": 4,
    "netsim.scenario": 5,
    "netsim.live": 6,
    "netsim": 7,  # the package root: the public API, above everything it re-exports
    "netsim.cli": 8, "netsim.__main__": 9,
}
STORAGE = {
    "storage.errors": 0, "storage.units": 0.5,
    "storage.devices": 1,
    "storage.vhd": 2, "storage.lvm": 2, "storage.rings": 2,
    "storage.diskspec": 3, "storage.sr": 3, "storage.nbd": 3,
    "storage": 4,
    "storage.cli": 5,
}
LAYERS: dict[str, float] = {**NETSIM, **STORAGE}


def layer_of(module: str) -> str | None:
    """The longest layer name that `module` is or lies inside."""
    best = None
    for name in LAYERS:
        if (module == name or module.startswith(name + ".")) and (
            best is None or len(name) > len(best)
        ):
            best = name
    return best


def is_module(dotted: str) -> bool:
    path = ROOT / dotted.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").exists()


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import submodule` imports the submodule; `from mod import name`, the module
            subs = [f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")]
            found += [(node.lineno, m) for m in subs or [base]]
    return found


def violations_in(path: Path) -> list[str]:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    own = layer_of(module)
    out = []
    for line, imported in imports_of(path, module):
        top = imported.split(".")[0]
        where = f"{path.relative_to(ROOT)}:{line}: {module} imports {imported}"
        if top == "bench":
            out.append(f"{where} (nothing in netsim or storage imports bench)")
        elif module.startswith("storage") and top == "netsim":
            out.append(f"{where} (storage never imports netsim)")
        elif top in ("netsim", "storage") and own is not None:
            theirs = layer_of(imported)
            if theirs is None or theirs == own:
                continue
            if own.split(".")[0] != theirs.split(".")[0]:
                continue  # netsim -> storage is allowed (VM disks); the reverse is caught above
            if own in ("netsim", "storage") and imported.startswith(own + "."):
                continue  # the package root re-exports from its own layers
            if LAYERS[theirs] >= LAYERS[own]:
                out.append(f"{where} ({own} may not import {theirs}: same or higher layer)")
    return out


def source_files() -> list[Path]:
    return sorted(p for d in ("netsim", "storage") for p in (ROOT / d).rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = [str(p.relative_to(ROOT)) for p in source_files()
                if layer_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) is None]
    assert unplaced == []


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    assert violations_in(path) == []


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    # a data-plane module importing the lab, and a storage module importing netsim
    bad = ROOT / "netsim" / "dataplane" / "_layer_probe.py"
    bad.write_text("from netsim.lab.fabric import Fabric\nimport bench.switch\n")
    bad2 = ROOT / "storage" / "devices" / "_layer_probe.py"
    bad2.write_text("def f():\n    from netsim.wire import frame\n    from storage.sr import sr\n")
    try:
        v1, v2 = violations_in(bad), violations_in(bad2)
    finally:
        bad.unlink()
        bad2.unlink()
    assert len(v1) == 2 and "may not import netsim.lab" in v1[0] and "bench" in v1[1]
    assert len(v2) == 2 and "never imports netsim" in v2[0] and "storage.sr" in v2[1]
