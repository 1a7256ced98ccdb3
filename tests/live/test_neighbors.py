"""The live view's CDP/LLDP table: /api/neighbors serves the rows `hvsim run --neighbors`
prints, and the page shows them."""
from __future__ import annotations

import aiohttp

from netsim.clock import RealClock
from netsim.lab.discovery import neighbour_table
from netsim.lab.lab import Lab
from netsim.lab.topology import parse_topology
from netsim.live.server import LiveServer

LAB = """name: cdp-live
hosts:
  esx1:
    type: esxi
    pifs: {vmnic0: {}}
    switches:
      vSwitch0: {uplinks: [vmnic0], discovery: {protocol: cdp, operation: both}}
physical:
  core:
    discovery: {protocols: [cdp], mgmt: 192.0.2.2}
    ports:
      esx1.vmnic0: {mode: access, vlan: 30, ifname: Gi1/0/7}
"""


async def test_api_neighbors_serves_the_cli_table(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HVSIM_RUN_DIR", str(tmp_path / "run"))
    lab = Lab(parse_topology(LAB, "t.yaml"), clock=RealClock())
    async with lab:
        await lab.settle()
        async with LiveServer(lab.fabric, lab=lab, name="cdp", port=0) as srv, \
                aiohttp.ClientSession() as s:
            async with s.get(f"{srv.url}/api/neighbors") as r:
                rows = await r.json()
            async with s.get(f"{srv.url}/") as r:
                page = await r.text()
            expect = [row.as_dict() for row in neighbour_table(lab.fabric)]
    got = {(r["device"], r["port"]): r for r in rows}
    assert (got["esx1", "vmnic0"]["system"], got["esx1", "vmnic0"]["remote_port"],
            got["esx1", "vmnic0"]["vlan"], got["esx1", "vmnic0"]["mtu"]) == (
        "core", "Gi1/0/7", 30, 1500)
    assert (got["core", "Gi1/0/7"]["system"], got["core", "Gi1/0/7"]["remote_port"]) == (
        "esx1", "vmnic0")
    strip = [{k: v for k, v in r.items() if k != "hold_s"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "hold_s"} for r in expect]
    assert 'id="neighbors"' in page and "api/neighbors" in page
