"""Where running labs announce themselves, so `hvsim capture` and the Wireshark extcap adapter
find them: one JSON file per served lab (name, URL, token, pid) in a private directory.

The directory is `$HVSIM_RUN_DIR`, else `$XDG_RUNTIME_DIR/hvsim`, else `/tmp/hvsim-<uid>`; it is
created mode 0700 and each file 0600, because a file holds the lab's access token. A file whose
process is gone is ignored (and removed).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from netsim.errors import ConfigError, TopologyError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LabEntry:
    """A running lab: its name, the server's URL, the token (None on loopback) and the pid."""

    name: str
    url: str
    token: str | None
    pid: int


def run_dir() -> Path:
    """The directory of lab files (see the module docstring)."""
    env = os.environ.get("HVSIM_RUN_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "hvsim"
    return Path(f"/tmp/hvsim-{os.getuid()}")


def check_name(name: str) -> str:
    """A lab name: letters, digits, `_ . -`, at most 64 characters."""
    if not _NAME.match(name):
        raise ConfigError(f"lab name {name!r}: use letters, digits and _ . - (at most 64)")
    return name


def register(entry: LabEntry) -> Path:
    """Write the lab's file; refuses a name another running lab holds."""
    d = run_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = d / f"{check_name(entry.name)}.json"
    other = _read(path)
    if other is not None and other.pid != entry.pid:
        raise ConfigError(f"a lab named {entry.name!r} is already running (pid {other.pid}, "
                          f"{other.url}); pick another --name")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"name": entry.name, "url": entry.url, "token": entry.token,
                   "pid": entry.pid}, f)
    os.replace(tmp, path)
    return path


def unregister(name: str) -> None:
    """Remove the lab's file (if it is ours)."""
    path = run_dir() / f"{name}.json"
    e = _read(path)
    if e is not None and e.pid == os.getpid():
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> LabEntry | None:
    try:
        doc = json.loads(path.read_text())
        e = LabEntry(str(doc["name"]), str(doc["url"]), doc.get("token"), int(doc["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(e.pid):
        path.unlink(missing_ok=True)
        return None
    return e


def running_labs() -> list[LabEntry]:
    """Every lab whose server is still running, by name."""
    d = run_dir()
    if not d.is_dir():
        return []
    found = (_read(p) for p in sorted(d.glob("*.json")))
    return [e for e in found if e is not None]


def find_lab(name: str | None) -> LabEntry:
    """The running lab called `name`, or the only one running when `name` is None."""
    labs = running_labs()
    if name is not None:
        for e in labs:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in labs) or "none"
        raise TopologyError(f"no running lab named {name!r} (running: {known}); start one "
                            "with `hvsim serve TOPOLOGY`")
    if not labs:
        raise TopologyError("no running lab; start one with `hvsim serve TOPOLOGY` (or "
                            "`hvsim run TOPOLOGY --live`)")
    if len(labs) > 1:
        raise TopologyError("several labs are running (" + ", ".join(e.name for e in labs)
                            + "); name one with --lab or as LAB/PORT")
    return labs[0]
