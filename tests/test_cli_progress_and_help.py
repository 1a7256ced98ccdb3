"""Long commands show a progress bar on a terminal's stderr and nothing on a pipe; `--version`;
help texts keep their [brackets]."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TERM": "xterm-256color",
       "COLUMNS": "160"}


def run_with_tty_stderr(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run `hvsim ARGS` with stderr on a pseudo-terminal; returns (rc, stdout, terminal)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "netsim", *args], cwd=cwd, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait(120)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def run_piped(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsim", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_bench_topology_progress_on_a_terminal_only(tmp_path: Path) -> None:
    rc, out, tty = run_with_tty_stderr("bench", "topology", "--quick", cwd=tmp_path)
    assert rc == 0, tty
    # the bar refreshes at 10 Hz, so a fast stage may never be drawn; the last one always is
    assert "topology: pingall 30 VMs" in tty and "8/8" in tty, tty
    assert "\x1b[" not in out and "load + validate" in out   # the table, on stdout
    res = run_piped("bench", "topology", "--quick", cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_bench_reliability_names_its_stages() -> None:
    from bench import reliability

    seen: list[str] = []
    reliability._crash(True, seen.append)
    assert seen == ["power cuts: SR snapshot (file)"]


def test_sr_gc_progress_on_a_terminal(tmp_path: Path) -> None:
    assert run_piped("sr", "create", "sr", "--type", "file", cwd=tmp_path).returncode == 0
    uuid = run_piped("vdi", "create", "--sr", "sr", "--size", "4M", "--name", "d",
                     cwd=tmp_path).stdout.strip()
    snap = run_piped("vdi", "snapshot", "--sr", "sr", uuid, cwd=tmp_path).stdout.strip()
    assert run_piped("vdi", "destroy", "--sr", "sr", snap, cwd=tmp_path).returncode == 0
    rc, out, tty = run_with_tty_stderr("sr", "gc", "sr", cwd=tmp_path)
    assert rc == 0, tty
    assert "1/1" in tty and "coalesce" in tty, tty       # the bar: step and count
    assert out.startswith("removed 0 base copies, coalesced 1"), out


def test_replay_progress_counts_frames_on_a_terminal(tmp_path: Path) -> None:
    from tests.scenario.test_examples import write_trace

    write_trace(tmp_path / "trace.pcap", n=600)
    args = ("replay", "--pcap", "trace.pcap", "--into", "vif1.0",
            str(ROOT / "topologies" / "xen-vlans.yaml"), "--speed", "max", "--capture",
            "vif2.0", "--out", "out")
    rc, out, tty = run_with_tty_stderr(*args, cwd=tmp_path)
    assert rc == 0, tty
    assert re.search(r"\d+ frames replayed", tty), tty
    assert "replayed 600 frames" in out
    res = run_piped(*args, cwd=tmp_path)
    assert "frames replayed" not in res.stderr and "\x1b[" not in res.stderr


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    res = run_piped("--version", cwd=tmp_path)
    assert res.returncode == 0
    assert res.stdout.startswith(f"hvsim {version('hvsim')} (Python ")


def _walk(cmd: typer.core.TyperGroup, path: list[str]):  # type: ignore[no-untyped-def]
    yield path, cmd
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        yield from _walk(sub, [*path, name])


def test_help_texts_keep_their_brackets() -> None:
    from typer.testing import CliRunner

    from netsim.cli.app import load_commands

    app = load_commands()
    root = typer.main.get_command(app)
    runner = CliRunner()
    checked = 0
    for path, cmd in _walk(root, []):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        wanted = [re.sub(r"\\\[", "[", m) for t in texts for m in re.findall(r"\\?\[[^\]]*\]", t)
                  if not m.startswith("[/") and not re.fullmatch(r"\[(bold|dim|red|green)\]", m)]
        if not wanted:
            continue
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250"},
                            terminal_width=250)
        for w in wanted:
            assert w in res.output, (path, w, res.output)
            checked += 1
    assert checked >= 2   # lvm lvs --all "[brackets]", ring serve "PV[,PV...]"


@pytest.mark.parametrize("cmd", [["lvm", "lvs", "--help"]])
def test_lvs_help_shows_brackets(cmd: list[str], tmp_path: Path) -> None:
    res = run_piped(*cmd, cwd=tmp_path)
    assert "in [brackets] (snapshotN)" in res.stdout, res.stdout
