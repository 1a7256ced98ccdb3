"""`hvsim vhd export`, `vdi export` and `vdi import` without loading typer, rich or netsim.

A 1 GiB export takes a quarter of a second; starting the full CLI (typer with its pydantic
adapters, rich, the command tree) took as long again, which made `hvsim vhd export` 0.6x as
fast as `qemu-img convert` while the copy itself ran at 1.3x. So a plain invocation of these
data-moving commands is recognised here, with a hand-written parser for exactly their
documented options, and run directly. Anything else (`--help`, an unknown or misspelt option,
a wrong number of arguments, a progress bar to draw) returns None and the full CLI handles it,
with its usage messages; the commands do the same work and print the same lines either way.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: command -> (options taking a value, flags, number of positional arguments)
_SPECS: dict[tuple[str, str], tuple[frozenset[str], frozenset[str], int]] = {
    ("vhd", "export"): (frozenset(), frozenset({"--force-share", "-U"}), 2),
    ("vdi", "export"): (frozenset({"--sr", "--format", "--base"}), frozenset(), 2),
    ("vdi", "import"): (frozenset({"--sr", "--format"}), frozenset(), 2),
}


def parse(argv: list[str]) -> tuple[tuple[str, str], dict[str, str | bool], list[str]] | None:
    """(command, options, positionals) when `argv` is a plain use of a fast command, else None."""
    if len(argv) < 2 or (argv[0], argv[1]) not in _SPECS:
        return None
    cmd = (argv[0], argv[1])
    valued, flags, npos = _SPECS[cmd]
    opts: dict[str, str | bool] = {}
    pos: list[str] = []
    args = iter(argv[2:])
    for a in args:
        if a.startswith("-") and a != "-":
            name, eq, value = a.partition("=")
            if name in valued and name not in opts:
                if not eq:
                    nxt = next(args, None)
                    if nxt is None or nxt.startswith("-"):
                        return None
                    value = nxt
                opts[name] = value
            elif name in flags and not eq:
                opts[name] = True
            else:                               # --help, --, unknown or repeated options
                return None
        else:
            pos.append(a)
    if len(pos) != npos or (cmd[0] == "vdi" and "--sr" not in opts):
        return None
    return cmd, opts, pos


def _progress_wanted() -> bool:
    # the full CLI draws a rich progress bar for `vhd export` in these cases
    return sys.stderr.isatty() or bool(os.environ.get("HVSIM_PROGRESS"))


def run(argv: list[str]) -> int | None:
    """Run `argv` (without the program name) if `parse` accepts it; returns the exit status,
    or None when the full CLI must handle it."""
    parsed = parse(argv)
    if parsed is None:
        return None
    cmd, opts, pos = parsed
    if cmd == ("vhd", "export") and _progress_wanted():
        return None
    from storage.errors import StorageError

    commands: dict[tuple[str, str], Callable[[dict[str, str | bool], list[str]], str]] = {
        ("vhd", "export"): _vhd_export, ("vdi", "export"): _vdi_export,
        ("vdi", "import"): _vdi_import}
    try:
        try:
            line = commands[cmd](opts, pos)
        except OSError as exc:                  # as storage.cli.vhd._os_errors words it
            raise StorageError(f"{exc.filename or 'I/O'}: {exc.strerror or exc}") from exc
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                   # as click does for the full CLI
        print("Aborted!", file=sys.stderr)
        return 1
    print(line)
    return 0


def _vhd_export(opts: dict[str, str | bool], pos: list[str]) -> str:
    from storage.devices.imagelock import LockMode
    from storage.vhd import chain

    path, out = pos
    img = chain.open_chain(path, read_only=True,
                           lock=LockMode.NONE if opts.get("--force-share") or opts.get("-U")
                           else None)
    try:
        chain.export(img, out)
    finally:
        img.close()
    return f"exported {img.size} bytes to {out}"


def _vdi_export(opts: dict[str, str | bool], pos: list[str]) -> str:
    from storage.sr import transfer
    from storage.sr.sr import SR

    uuid, file = pos
    base = opts.get("--base")
    n = transfer.vdi_export(SR.open(str(opts["--sr"])), uuid, file,
                            fmt_name=str(opts.get("--format", "raw")),
                            base=str(base) if base else None)
    what = f"{n} changed bytes since {base}" if base else f"{n} bytes"
    return f"exported {what} of VDI {uuid} to {file}"


def _vdi_import(opts: dict[str, str | bool], pos: list[str]) -> str:
    from storage.sr import transfer
    from storage.sr.sr import SR

    uuid, file = pos
    n = transfer.vdi_import(SR.open(str(opts["--sr"])), uuid, file,
                            fmt_name=str(opts.get("--format", "raw")))
    return f"imported {file} into VDI {uuid} ({n} bytes written)"
