"""`hvsim bench NAME`: registers itself on the CLI root (the arrow points from bench to the CLI)."""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)


def available_benchmarks() -> list[str]:
    """Names accepted by `hvsim bench`."""
    import bench

    modules = pkgutil.iter_modules(bench.__path__)
    return sorted(m.name for m in modules if not m.name.startswith("_"))


def bench_cmd(
    name: Annotated[str, typer.Argument(help="Benchmark to run: switch, storage, ring, vds, ...")],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this JSON file.")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Fewer iterations, for a smoke run.")] = False,
    full: Annotated[bool, typer.Option(help="Only the full-size run where a benchmark has one "
                                       "(topology: all 999,000 pings of the 1,000-VM "
                                       "pingall, measured, not projected).")] = False,
) -> None:
    """Run a benchmark and print its figures with ratios against in-process baselines.

    Example: hvsim bench switch --json switch.json
    """
    names = available_benchmarks()
    if name not in names:
        raise typer.BadParameter(f"no benchmark {name!r}; available: {', '.join(names) or 'none'}")
    module = importlib.import_module(f"bench.{name}")
    if full:
        if "full" not in inspect.signature(module.run).parameters:
            raise typer.BadParameter(f"benchmark {name!r} has no --full run")
        result = module.run(quick=quick, full=True)
    else:
        result = module.run(quick=quick)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        err_console.print(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add the `bench` command to `app`."""
    app.command("bench")(bench_cmd)
