"""The `hvsim` root command: help, benchmark lookup, and error translation."""
from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from bench._cli import available_benchmarks
from netsim.cli.app import app

runner = CliRunner()


def test_help_lists_bench_and_says_what_hvsim_does() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "bench" in result.output
    assert "hypervisor" in result.output


def test_unknown_benchmark_is_a_clear_error_not_a_traceback() -> None:
    result = runner.invoke(app, ["bench", "no-such-bench"])
    assert result.exit_code != 0
    assert "no benchmark 'no-such-bench'" in result.output
    assert "Traceback" not in result.output


def test_python_dash_m_runs_the_same_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "netsim", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_benchmark_names_come_from_the_bench_package() -> None:
    assert all(not n.startswith("_") for n in available_benchmarks())


def test_command_owner_map_matches_what_each_module_registers() -> None:
    import importlib

    import typer
    from typer.main import get_command

    from netsim.cli.app import COMMAND_MODULES, COMMAND_OWNERS

    registered: dict[str, str] = {}
    for module in COMMAND_MODULES:
        fresh = typer.Typer()
        fresh.callback()(lambda: None)
        importlib.import_module(module).register(fresh)
        for name in get_command(fresh).commands:  # type: ignore[attr-defined]
            registered[name] = module
    assert registered == COMMAND_OWNERS


def test_a_command_runs_with_only_its_own_module_loaded() -> None:
    code = (
        "import sys; sys.argv = ['hvsim', 'vhd', '--help']\n"
        "import netsim.cli.app as c\n"
        "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(c._loaded))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert "create" in proc.stdout, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "['storage.cli.vhd']"


def test_a_reader_that_goes_away_gives_no_traceback() -> None:
    # `hvsim lvm lvs --help | head -1`: the long help hits a closed pipe
    proc = subprocess.Popen([sys.executable, "-m", "netsim", "lvm", "lvs", "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**__import__("os").environ, "COLUMNS": "80"})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err
    assert proc.returncode in (0, 1)  # click: EPIPE ends the command quietly with status 1
