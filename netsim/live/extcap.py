"""hvsim as a Wireshark extcap: every port of every running lab is a capture interface.

Wireshark (and tshark) run each program in their extcap folder with (extcap(4), Wireshark's
`extcap.h` and `doc/extcap_example.py`):

    --extcap-interfaces [--extcap-version=V]      one `extcap {..}` line, `interface {..}` lines
    --extcap-dlts --extcap-interface I            the link type: `dlt {number=1}{name=EN10MB}..`
    --extcap-config --extcap-interface I          the options of the capture dialog: `arg {..}`
    --extcap-interface I --extcap-capture-filter F
                                                  validate a capture filter: exit 0 if valid,
                                                  else print why and exit 1
    --capture --extcap-interface I --fifo PATH [--extcap-capture-filter F]
                                                  write a pcapng stream to PATH until stopped

An interface is `hvsim-LAB/PORT`, shown as `hvsim: LAB/PORT`. The capture filter field takes
hvsim's filter language (`vlan 65 and icmp`, see `netsim.wire.filters`), evaluated in the lab.
`hvsim extcap --install` puts a small launcher into the personal extcap folder
(`~/.config/wireshark/extcap/`, where Wireshark 4.0 looks) that runs this module with the
Python hvsim is installed in.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import sys
from pathlib import Path

from netsim.errors import NetsimError

PREFIX = "hvsim-"
EXTCAP_VERSION = "1.0"


def personal_extcap_dir() -> Path:
    """Wireshark 4.0's personal extcap folder: `$XDG_CONFIG_HOME/wireshark/extcap` (default
    `~/.config/wireshark/extcap`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "wireshark" / "extcap"


def install(directory: Path | None = None) -> Path:
    """Write the launcher `hvsim` into `directory` (default: the personal extcap folder)."""
    d = directory if directory is not None else personal_extcap_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        path = d / "hvsim"
        env = ""
        if os.environ.get("HVSIM_RUN_DIR"):
            env = f"HVSIM_RUN_DIR={_sh(os.environ['HVSIM_RUN_DIR'])} "
        root = Path(__file__).resolve().parents[2]
        path.write_text("#!/bin/sh\n# hvsim extcap launcher, written by `hvsim extcap --install`\n"
                        f"PYTHONPATH={_sh(str(root))}${{PYTHONPATH:+:$PYTHONPATH}} "
                        f"{env}exec {_sh(sys.executable)} -m netsim.live.extcap \"$@\"\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError as exc:
        raise NetsimError(f"cannot install the extcap launcher in {d}: {exc.strerror}") from exc
    return path


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hvsim-extcap", add_help=True)
    p.add_argument("--extcap-interfaces", action="store_true")
    p.add_argument("--extcap-version")
    p.add_argument("--extcap-interface")
    p.add_argument("--extcap-dlts", action="store_true")
    p.add_argument("--extcap-config", action="store_true")
    p.add_argument("--extcap-capture-filter")
    p.add_argument("--capture", action="store_true")
    p.add_argument("--fifo")
    p.add_argument("--extcap-reload-option")
    p.add_argument("--extcap-control-in")
    p.add_argument("--extcap-control-out")
    p.add_argument("--limit", type=int, default=None)
    return p


def _split(iface: str) -> tuple[str, str]:
    if not iface.startswith(PREFIX) or "/" not in iface:
        raise NetsimError(f"{iface!r} is not an hvsim interface (hvsim-LAB/PORT)")
    lab, port = iface[len(PREFIX):].split("/", 1)
    return lab, port


def interfaces() -> list[str]:
    """The `--extcap-interfaces` answer, line by line."""
    from netsim.live.client import lab_ports
    from netsim.live.registry import running_labs

    lines = [f"extcap {{version={EXTCAP_VERSION}}}{{help=hvsim serve TOPOLOGY, then capture "
             "any port of the running lab}}"]
    for entry in running_labs():
        try:
            ports = asyncio.run(lab_ports(entry))
        except NetsimError:
            continue  # a lab that stopped answering: list the others
        for p in ports:
            lines.append(f"interface {{value={PREFIX}{entry.name}/{p['path']}}}"
                         f"{{display=hvsim: {entry.name}/{p['name']}}}")
    return lines


def config_lines() -> list[str]:
    """The `--extcap-config` answer: the options of Wireshark's capture dialog."""
    return [
        "arg {number=0}{call=--limit}{display=Buffer (frames)}{tooltip=Frames the lab keeps "
        "for a slow reader before it counts drops}{type=integer}{range=1,1048576}"
        "{default=4096}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run one extcap request; returns the exit status."""
    args, _unknown = _parser().parse_known_args(argv)
    try:
        if args.extcap_interfaces:
            print("\n".join(interfaces()))
            return 0
        if args.extcap_dlts:
            _split(args.extcap_interface or "")
            print(f"dlt {{number=1}}{{name=EN10MB}}{{display=Ethernet ({args.extcap_interface})}}")
            return 0
        if args.extcap_config:
            print("\n".join(config_lines()))
            return 0
        if args.capture:
            return _capture(args)
        if args.extcap_capture_filter is not None:
            from netsim.wire.filters import compile_filter

            try:
                compile_filter(args.extcap_capture_filter)
            except NetsimError as exc:
                print(str(exc))
                return 1
            return 0
    except NetsimError as exc:
        print(f"hvsim extcap: {exc}", file=sys.stderr)
        return 2
    print("hvsim extcap: nothing to do (see --extcap-interfaces)", file=sys.stderr)
    return 2


def _capture(args: argparse.Namespace) -> int:
    from netsim.live.client import stream_capture
    from netsim.live.registry import find_lab
    from netsim.wire.filters import compile_filter

    if not args.fifo:
        raise NetsimError("--capture needs --fifo PATH")
    lab, port = _split(args.extcap_interface or "")
    flt = args.extcap_capture_filter or ""
    compile_filter(flt)  # a bad filter is one clear line, before anything is opened
    entry = find_lab(lab)
    with open(args.fifo, "wb", buffering=0) as out:
        def write(chunk: bytes) -> None:
            out.write(chunk)

        async def run() -> None:
            task = asyncio.create_task(stream_capture(entry, [port], write, flt=flt,
                                                      limit=args.limit))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await task

        try:
            asyncio.run(run())
        except BrokenPipeError:
            pass  # Wireshark closed the fifo: the capture was stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())
