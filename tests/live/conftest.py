"""A served lab in a subprocess (`hvsim serve`), found through its registry file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


@dataclass
class Served:
    name: str
    url: str
    token: str | None
    env: dict[str, str]
    proc: subprocess.Popen


def start_serve(tmp: Path, topology: str, *extra: str) -> Served:
    run_dir = tmp / "run"
    env = {**os.environ, "HVSIM_RUN_DIR": str(run_dir), "XDG_CONFIG_HOME": str(tmp / "cfg")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "netsim", "serve", str(TOPOLOGIES / topology), "--port", "0",
         *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = list(run_dir.glob("*.json")) if run_dir.is_dir() else []
        if files:
            doc = json.loads(files[0].read_text())
            return Served(doc["name"], doc["url"], doc["token"], env, proc)
        if proc.poll() is not None:
            raise AssertionError(f"hvsim serve exited: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("hvsim serve did not announce itself within 30 s")


def stop_serve(s: Served) -> str:
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
    return s.proc.stdout.read() if s.proc.stdout else ""


@pytest.fixture
def served_xen(tmp_path: Path) -> Iterator[Served]:
    s = start_serve(tmp_path, "xen-vlans.yaml", "--interval", "0.2")
    try:
        yield s
    finally:
        stop_serve(s)
