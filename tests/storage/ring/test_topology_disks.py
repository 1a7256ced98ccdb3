"""VMs in a topology get their disks through blkif rings: `disks:` in the YAML, served by a
blkback per host when the lab runs, reached with `lab.disk(vm, device)`."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from netsim.errors import TopologyError
from netsim.lab.lab import Lab
from netsim.lab.topology import load_topology, parse_topology
from storage.vhd.chain import create_image, open_chain

TOPO = """
name: disks
hosts:
  xen1:
    type: xen
    networks:
      lan: {internal: true}
    vms:
      web:
        vifs: [{network: lan, ip: 10.0.0.1/24}]
        disks:
          - web.vhd
          - {device: xvdc, source: shared.raw, mode: ro}
      db:
        vifs: [{network: lan, ip: 10.0.0.2/24}]
        disks: [{source: "mem:8M"}]
"""


def test_disks_are_parsed_with_xen_device_numbers() -> None:
    topo = parse_topology(TOPO)
    web = topo.vm("web")
    assert [(d.device, d.devid, d.source, d.read_only) for d in web.disks] == [
        ("xvda", 51712, "web.vhd", False), ("xvdc", 51744, "shared.raw", True)]
    assert topo.vm("db").disks[0].devid == 51712


@pytest.mark.parametrize(("snippet", "message"), [
    ("disks: [{device: sda, source: a.raw}]", "expected xvda ... xvdp"),
    ("disks: [{source: a.raw, mode: rwx}]", "expected rw or ro"),
    ("disks: [{device: xvda}]", "needs `source:`"),
    ("disks: [a.raw, {device: xvda, source: b.raw}]", "xvda is already"),
    ("disks: [{source: a.raw, size: 3}]", "unknown key 'size'"),
])
def test_bad_disks_are_named_with_their_line(snippet: str, message: str) -> None:
    text = f"""
hosts:
  xen1:
    type: xen
    vms:
      vm1:
        {snippet}
"""
    with pytest.raises(TopologyError, match=message) as info:
        parse_topology(text)
    assert "topology.yaml:7" in str(info.value)


def test_disks_only_on_xen_hosts() -> None:
    text = "hosts:\n  esx1:\n    type: esxi\n    vms:\n      vm1:\n        disks: [a.vhd]\n"
    with pytest.raises(TopologyError, match="only VMs on xen hosts"):
        parse_topology(text)


async def test_lab_serves_vm_disks_through_rings(tmp_path: Path) -> None:
    create_image(tmp_path / "web.vhd", size=16 << 20).close()
    (tmp_path / "shared.raw").write_bytes(b"shared!" + bytes((1 << 20) - 7))
    (tmp_path / "disks.yaml").write_text(TOPO)
    topo = load_topology(tmp_path / "disks.yaml")
    data = random.Random(1).randbytes(300_000)
    async with Lab(topo) as lab:
        web = lab.disk("web")
        await web.write(4097, data)
        await web.flush()
        assert await web.read(4097, len(data)) == data
        shared = lab.disk("web", "xvdc")
        assert shared.read_only and await shared.read(0, 7) == b"shared!"
        with pytest.raises(Exception, match="read-only"):
            await shared.write(0, b"no")
        db = lab.disk("db")
        await db.write(0, b"rows")
        assert await db.read(0, 4) == b"rows"
        with pytest.raises(TopologyError, match="no disk db:xvdb"):
            lab.disk("db", "xvdb")
        # the network side of the lab works as before
        assert (await lab.ping("web", "db")).replied
    img = open_chain(tmp_path / "web.vhd")
    try:
        assert img.read(4097, len(data)) == data
    finally:
        img.close()


async def test_missing_disk_fails_the_lab_start_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "disks.yaml").write_text(TOPO)
    topo = load_topology(tmp_path / "disks.yaml")
    with pytest.raises(TopologyError, match=r"web xvda \(web.vhd\)"):
        async with Lab(topo):
            pass
