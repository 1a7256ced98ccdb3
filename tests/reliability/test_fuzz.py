"""Hostile input, bounded: every parser that takes outside input keeps its contract (a correct
result or our typed error with a one-line message) over a few hundred structure-aware inputs.
`hvsim bench reliability` runs the same targets for thousands of inputs each."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from bench._rel import fuzz

BUDGET = {"VHD image open": 150, "switch ingress": 100, "topology YAML": 150,
          "scenario YAML": 60, "pcap/pcapng reader": 200, "filter language": 150,
          "declarative frames": 150, "vDS config (broker)": 150}


@pytest.mark.parametrize("name", [t.name for t in fuzz.TARGETS])
def test_parser_contract(name: str) -> None:
    t = fuzz.target(name)
    test = settings(max_examples=BUDGET.get(name, 250), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(
        given(t.strategy())(t.check))
    test()
