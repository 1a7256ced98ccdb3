"""Smoke run of `hvsim bench topology`: the generated lab loads and the figures are sane."""
from __future__ import annotations

from bench.topology import generate, run
from netsim.lab.topology import parse_topology


def test_generator_spreads_vms_over_hosts_and_vlans() -> None:
    topo = parse_topology(generate(3, 30, 5))
    assert len(topo.hosts) == 3 and len(topo.vms) == 30
    assert {n.vlan for n in topo.host("xen1").networks} == {10, 11, 12, 13, 14}
    assert topo.physical[0].ports[0].vlans == (10, 11, 12, 13, 14)


def test_quick_bench_reports_its_figures() -> None:
    result = run(quick=True, scale=False)  # the scale rows have their own test below
    assert result["vms"] == 200
    assert 0 < result["load_and_graph_s"] < 5
    assert 0 < result["peak_mib"] < 1024
    assert result["graph_nodes"] > result["vms"]
    assert 0 < result["load_graph_build_s"] < 5
    # pingall over the small lab: exactly the same-VLAN pairs answer
    assert result["pingall_answered"] == result["pingall_expected"] > 0
    assert result["pingall_pairs"] == result["pingall_vms"] * (result["pingall_vms"] - 1)


def test_quick_bench_has_the_scale_rows_beside_their_baselines() -> None:
    from bench._scale import MININET_PINGALL_100_S, run_scale

    rows = run_scale(quick=True)
    a = rows["pingall_100"]
    assert a["all_answered"] and a["baseline_mininet_s_quoted"] == MININET_PINGALL_100_S
    assert a["cpu_s"] > 0 and a["wall_s"] >= a["cpu_s"] / 2  # one process, at most 2 cores
    b = rows["pingall_1000"]
    assert b["exact"] and b["measured"]["answered"] == b["measured"]["expected"] > 0
    c = rows["build_teardown_5000"]["measured"]
    assert 0 < c["build_start_stop_s"] and c["rss_mib"] < 1024


def test_full_pingall_is_measured_not_projected() -> None:
    from bench._scale import run_full_pingall

    row = run_full_pingall(quick=True)  # every VM of a 200-VM lab on 4 VLANs pings every other
    m = row["measured"]
    assert m["pairs"] == row["pings"] == 200 * 199 and m["sources"] == 200
    assert row["exact"] and m["answered"] == m["expected"] == 4 * 50 * 49
    assert 0 < m["pingall_cpu_s"] <= m["cpu_s"] and 0 < m["rss_mib"] < 1024


def test_bench_full_on_a_benchmark_without_one_is_one_clear_error() -> None:
    from typer.testing import CliRunner

    from netsim.cli.app import app

    result = CliRunner().invoke(app, ["bench", "switch", "--full"])
    assert result.exit_code == 2
    assert "has no --full run" in result.output and "Traceback" not in result.output
