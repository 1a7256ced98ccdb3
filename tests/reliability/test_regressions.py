"""Inputs that once broke a parser's contract (found by the fuzz targets), kept forever."""
from __future__ import annotations

import pytest

from bench._rel import fuzz
from netsim.errors import TopologyError
from netsim.lab.topology import parse_topology
from storage.errors import LvmError
from storage.lvm.textfmt import emit_text, parse_text


@pytest.mark.parametrize("reg", fuzz.REGRESSIONS, ids=lambda r: r.found[:40])
def test_regression_input_keeps_contract(reg: fuzz.Regression) -> None:
    fuzz.target(reg.target).check(reg.input)


def test_non_utf8_lvm_metadata_names_the_offset() -> None:
    with pytest.raises(LvmError, match=r"meta\.txt: metadata text is not UTF-8 \(byte 0x80 at"):
        parse_text(b'contents = "Text Format Volume Group"\n\x80', "meta.txt")


def test_yaml_control_character_error_names_file_and_line() -> None:
    with pytest.raises(TopologyError) as ei:
        parse_topology("name: lab\nhosts: {}\nseed: \x07\n", "lab.yaml")
    msg = str(ei.value)
    assert msg.startswith("lab.yaml:3: not valid YAML:") and "\n" not in msg


def test_lv_creation_host_survives_rewrite_without_creation_time() -> None:
    text = fuzz.REGRESSIONS[3].input
    vg, header = parse_text(text)
    again, _ = parse_text(emit_text(vg, header))
    assert again.lv("data").creation_host == "vm" == vg.lv("data").creation_host


def test_vds_config_error_stays_one_line_for_hostile_names() -> None:
    from netsim.errors import ConfigError
    from netsim.vds.vdsconfig import VdsConfig

    bad = next(r for r in fuzz.REGRESSIONS if r.target == "vDS config (broker)").input
    with pytest.raises(ConfigError) as ei:
        VdsConfig.from_json(bad, "hvsim/lab/vds/dvs1/config")
    assert "hosts['\\n']" in str(ei.value) and "\n" not in str(ei.value)


def test_deep_filters_are_refused_or_flat() -> None:
    from netsim.wire.filters import FilterError, compile_filter

    with pytest.raises(FilterError, match="nesting deeper than 64 levels"):
        compile_filter("(" * 100 + "udp" + ")" * 100)
    long_chain = compile_filter(" or ".join(["arp"] * 5000))
    assert long_chain(bytes(12) + b"\x08\x06" + bytes(46)) is True
