"""Fixtures for the SR data-movement tests: one SR of each type."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from netsim.cli.app import app
from storage.errors import StorageError

SR_TYPES = ["file", "lvm", "lvhd"]
runner = CliRunner()


def make_sr(path: Path, kind: str) -> Path:
    """Create an SR of `kind` in `path` through the CLI; returns its directory."""
    args = ["sr", "create", str(path), "--type", kind]
    if kind != "file":
        args += ["--size", "256M"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return path


def hv(*args: object, code: int = 0) -> str:
    """Run `hvsim ARGS` in-process; assert the exit status; return stdout (+stderr)."""
    res = runner.invoke(app, [str(a) for a in args])
    if code == 2:   # `hvsim` (netsim.cli.app.main) prints a StorageError as one line, exit 2
        assert isinstance(res.exception, StorageError), (res.output, res.exception)
        return str(res.exception)
    assert res.exit_code == code, (res.output, res.exception)
    return res.output


@pytest.fixture(params=SR_TYPES)
def sr_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An empty SR of each type."""
    return make_sr(tmp_path / f"sr-{request.param}", request.param)
