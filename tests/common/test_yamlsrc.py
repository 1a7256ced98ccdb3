"""YAML loading with line numbers: the basis of every `file:line: key: message` error."""
from __future__ import annotations

import pytest

from netsim.errors import TopologyError
from netsim.lab.yamlsrc import format_path, load_yaml

DOC = """\
hosts:
  xen1:
    vms:
      vm1:
        vifs:
          - {network: vlan5, mac: "00:16:3e:00:00:01"}
          - network: lan
"""


def test_data_is_plain_python() -> None:
    data, _ = load_yaml(DOC, "t.yaml")
    assert data["hosts"]["xen1"]["vms"]["vm1"]["vifs"][1] == {"network": "lan"}
    assert data["hosts"]["xen1"]["vms"]["vm1"]["vifs"][0]["mac"] == "00:16:3e:00:00:01"


def test_lines_of_keys_and_items() -> None:
    _, smap = load_yaml(DOC, "t.yaml")
    assert smap.line(("hosts", "xen1")) == 2
    assert smap.line(("hosts", "xen1", "vms", "vm1", "vifs", 0, "network")) == 6
    assert smap.line(("hosts", "xen1", "vms", "vm1", "vifs", 1, "network")) == 7
    # a path that does not exist falls back to its nearest ancestor
    assert smap.line(("hosts", "xen1", "vms", "vm1", "vifs", 1, "ip")) == 7


def test_error_names_file_line_and_key() -> None:
    _, smap = load_yaml(DOC, "topology.yaml")
    err = smap.error(("hosts", "xen1", "vms", "vm1", "vifs", 0, "network"),
                     "no network 'vlan6' on host xen1", TopologyError)
    assert isinstance(err, TopologyError)
    assert str(err) == ("topology.yaml:6: hosts.xen1.vms.vm1.vifs[0].network: "
                        "no network 'vlan6' on host xen1")


def test_syntax_error_names_line() -> None:
    with pytest.raises(TopologyError, match=r"^bad.yaml:2: not valid YAML"):
        load_yaml("a: 1\n b: [\n", "bad.yaml", TopologyError)


def test_duplicate_key_is_refused_with_its_line() -> None:
    with pytest.raises(TopologyError, match=r"^d.yaml:3: a.x: duplicate key"):
        load_yaml("a:\n  x: 1\n  x: 2\n", "d.yaml", TopologyError)


def test_python_tags_are_not_executed() -> None:
    with pytest.raises(TopologyError):
        load_yaml("a: !!python/object/apply:os.system ['true']\n", "evil.yaml", TopologyError)


def test_format_path() -> None:
    assert format_path(("vms", "vm1", "vifs", 0, "network")) == "vms.vm1.vifs[0].network"
    assert format_path(()) == "<document>"
