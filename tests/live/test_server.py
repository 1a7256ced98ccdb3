"""The live server: REST endpoints and actions, access rules (token, loopback Host), the
WebSocket's rate, streamed captures with their bounded buffer and drop statistics."""
from __future__ import annotations

import asyncio
import itertools
import struct
from pathlib import Path

import aiohttp
import pytest

from netsim.clock import RealClock
from netsim.dataplane.switch import PortGroup
from netsim.errors import ConfigError
from netsim.lab.fabric import Fabric
from netsim.lab.lab import Lab
from netsim.lab.topology import load_topology
from netsim.live.server import LiveServer
from netsim.live.stream import CaptureStream
from netsim.wire import frame as fr
from netsim.wire.capture import read_pcapng

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def isbs(data: bytes) -> list[tuple[int, int, int]]:
    """(interface, isb_ifrecv, isb_ifdrop) of every Interface Statistics Block."""
    out = []
    off = 0
    while off + 12 <= len(data):
        btype, total = struct.unpack_from("<II", data, off)
        if btype == 5:
            if_id = struct.unpack_from("<I", data, off + 8)[0]
            p, end = off + 20, off + total - 4
            opts = {}
            while p + 4 <= end:
                code, n = struct.unpack_from("<HH", data, p)
                if code == 0:
                    break
                opts[code] = data[p + 4:p + 4 + n]
                p += 4 + n + (-n % 4)
            out.append((if_id, struct.unpack("<Q", opts[4])[0], struct.unpack("<Q", opts[5])[0]))
        off += total
    return out


@pytest.fixture
async def served(tmp_path, monkeypatch):
    monkeypatch.setenv("HVSIM_RUN_DIR", str(tmp_path / "run"))
    lab = Lab(load_topology(TOPOLOGIES / "xen-vlans.yaml"), clock=RealClock())
    async with lab:
        await lab.pingall()
        async with LiveServer(lab.fabric, lab=lab, name="xv", port=0) as srv:
            yield lab, srv


async def test_rest_reads_and_actions(served) -> None:
    lab, srv = served
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{srv.url}/api/topology") as r:
            topo = await r.json()
        names = {p["name"] for p in topo["ports"]}
        assert {"vif1.0", "eth0", "eth0.65"} <= names
        assert any(n["kind"] == "vm" for n in topo["graph"]["nodes"])
        async with s.get(f"{srv.url}/api/mac/xen1/xapi1") as r:
            macs = await r.json()
        assert {(m["mac"], m["port"]) for m in macs} >= {("00:16:3e:00:41:03", "vif3.0")}
        async with s.get(f"{srv.url}/api/mac/nosuch") as r:
            assert r.status == 404
        async with s.get(f"{srv.url}/api/counters") as r:
            c = (await r.json())["ports"]
        assert c["xen1/vif1.0"]["rx_frames"] > 0
        async with s.post(f"{srv.url}/api/link", json={"port": "eth0", "up": False}) as r:
            assert r.status == 200 and (await r.json())["link_up"] is False
        assert not lab.fabric["xen1/eth0"].link_up
        async with s.get(f"{srv.url}/api/events") as r:
            assert "eth0 link down" in [e["text"] for e in await r.json()]
        async with s.post(f"{srv.url}/api/link", json={"port": "eth0"}) as r:
            assert r.status == 400
        async with s.post(f"{srv.url}/api/trace", json={
                "from": "vif1.0", "frame": "{eth: {dst: 00:16:3e:00:41:03}, vlan: 65}"}) as r:
            t = await r.json()
        assert t["drops"] == [{"port": "vif1.0", "reason": "tagged-on-access",
                               "cause": "vif1.0: access port of VLAN 0 takes no tagged frames"}]
        async with s.post(f"{srv.url}/api/trace", json={"from": "vm1", "frame": "zz"}) as r:
            assert r.status == 400 and "frame" in (await r.json())["error"]
        async with s.get(f"{srv.url}/") as r:
            assert r.status == 200 and "hvsim live" in await r.text()


async def test_non_loopback_needs_a_token_and_requests_need_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HVSIM_RUN_DIR", str(tmp_path / "run"))
    fab = Fabric(clock=RealClock())
    with pytest.raises(ConfigError, match="without a token"):
        LiveServer(fab, bind="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match="without a token"):
        LiveServer(fab, bind="192.0.2.1", port=0, token="")
    async with fab, LiveServer(fab, port=0, token="s3cret") as srv:
        # unsafe: keep cookies of an IP-address host, as browsers do
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            for path in ("/api/counters", "/", "/api/ports"):
                async with s.get(srv.url + path) as r:
                    assert r.status == 401
            async with s.get(srv.url + "/api/counters",
                             headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with s.get(srv.url + "/api/counters",
                             headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
            async with s.get(srv.url + "/?token=s3cret") as r:
                assert r.status == 200
            async with s.get(srv.url + "/api/counters") as r:  # the cookie the page set
                assert r.status == 200


async def test_loopback_without_token_refuses_foreign_host_names(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HVSIM_RUN_DIR", str(tmp_path / "run"))
    fab = Fabric(clock=RealClock())
    async with fab, LiveServer(fab, port=0) as srv, aiohttp.ClientSession() as s:
        async with s.get(srv.url + "/api/counters", headers={"Host": "evil.example"}) as r:
            assert r.status == 403  # DNS rebinding: a page elsewhere must not reach the lab
        async with s.get(srv.url + "/api/counters", headers={"Host": "localhost:1"}) as r:
            assert r.status == 200


async def test_websocket_sends_deltas_at_most_ten_a_second(served) -> None:
    lab, srv = served
    vnic = lab.fabric["vm1"].vnic
    bcast = fr.ethernet(fr.BROADCAST, vnic.mac, 0x0800, bytes(46))
    stop = asyncio.Event()

    async def traffic() -> None:
        # 20 frames a tick: rx_fps stays far above 50 even when a loaded machine stretches
        # the ticks tenfold
        while not stop.is_set():
            for _ in range(20):
                vnic.send(bcast)
            await asyncio.sleep(0.005)

    t = asyncio.create_task(traffic())
    msgs = []
    try:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{srv.url}/api/ws") as ws:
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.5
            while loop.time() < end:
                try:
                    m = await ws.receive_json(timeout=end - loop.time())
                except TimeoutError:
                    break
                msgs.append((loop.time(), m))
    finally:
        stop.set()
        await t
    assert msgs[0][1]["full"] and "xen1/vif1.0" in msgs[0][1]["ports"]
    later = [m for _, m in msgs[1:]]
    assert any(m["ports"].get("xen1/vif1.0", {}).get("rx_fps", 0) > 50 for m in later)
    # at most 10 a second: 1.5 s gives at most 16 messages (first one included)
    assert len(msgs) <= 16
    # spaced when the server sent them (t_ns, the lab's clock): messages delayed on a loaded
    # machine may reach the client back to back, which says nothing of the server's rate
    gaps = [(b["t_ns"] - a["t_ns"]) / 1e9 for (_, a), (_, b) in itertools.pairwise(msgs)]
    assert min(gaps) >= 0.08, gaps


async def test_capture_endpoint_streams_pcapng(served) -> None:
    lab, srv = served
    vnic = lab.fabric["vm1"].vnic
    port = lab.fabric["xen1/vif1.0"]
    untapped = len(port.taps)

    async def send_once_capturing() -> None:
        # the frames go once the stream taps the port (a fixed 0.3 s raced the request's
        # start on a loaded machine and the capture missed them)
        deadline = asyncio.get_running_loop().time() + 30
        while len(port.taps) == untapped:
            assert asyncio.get_running_loop().time() < deadline, "the capture never started"
            await asyncio.sleep(0.01)
        for _ in range(5):
            vnic.send(fr.ethernet(fr.BROADCAST, vnic.mac, 0x0800, bytes(46)))

    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(send_once_capturing())
        async with s.get(f"{srv.url}/api/capture/vif1.0,xen1/eth0.pcapng",
                         params={"duration": "2", "filter": "broadcast"}) as r:
            assert r.headers["Content-Type"] == "application/x-pcapng"
            data = await r.read()
        await task
        async with s.get(f"{srv.url}/api/capture/vif1.0.pcapng",
                         params={"filter": "vlan and and"}) as r:
            assert r.status == 400
    names, recs = read_pcapng(data)
    assert names == ["vif1.0", "eth0"]
    assert [i for i, *_ in recs].count(0) >= 5  # vm1's broadcasts entering vif1.0
    assert any(i == 1 and fr.parse(f).vid == 5 for i, _, f, _ in recs)  # tagged 5 on eth0


async def test_stalled_reader_drops_are_counted_and_reported() -> None:
    fab = Fabric(clock=RealClock())
    host = fab.add_host("esx1")
    sw = host.add_switch("vs")
    sw.add_port_group(PortGroup("lan"))
    a = host.add_vm("a").add_nic(sw, "lan", mac="00:50:56:00:00:01")
    b = host.add_vm("b").add_nic(sw, "lan", mac="00:50:56:00:00:02")
    stream = CaptureStream([(b, "b.eth0")], clock=fab.clock, limit=10).start()
    f = fr.ethernet(b.mac, a.mac, 0x0800, bytes(46))
    for _ in range(40):
        a.vnic.send(f)
        b.vnic.drain()
    await asyncio.sleep(0)  # the full stream takes its tap off
    assert not b.taps
    for _ in range(60):  # the lab runs on; the stream counts from the port's counters
        a.vnic.send(f)
        b.vnic.drain()
    data = stream.take(1000)  # the reader wakes: room again, the tap returns
    assert b.taps
    assert stream.received == [100] and stream.dropped == [90]
    stream.close()
    tail = stream.statistics()
    assert isbs(tail) == [(0, 100, 90)]
    names, recs = read_pcapng(stream.header() + data + tail)
    assert names == ["b.eth0"] and len(recs) == 10


@pytest.mark.interop
def test_tshark_reads_the_stream_while_the_lab_runs(served_xen, tmp_path) -> None:
    import subprocess
    import sys

    cap = subprocess.Popen([sys.executable, "-m", "netsim", "capture", "vif1.0,eth0", "-w", "-"],
                           env=served_xen.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = subprocess.run(["tshark", "-i", "-", "-c", "3", "-T", "fields", "-e",
                              "frame.interface_name", "-e", "eth.src"], stdin=cap.stdout,
                             capture_output=True, text=True, timeout=60, check=False)
    finally:
        cap.kill()
        cap.wait()
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln]
    assert len(lines) == 3
    assert served_xen.proc.poll() is None  # frames came while the lab was still running


def test_filtered_stream_keeps_and_counts_only_matching_frames() -> None:
    from netsim.wire.filters import compile_filter

    fab = Fabric(clock=RealClock())
    host = fab.add_host("esx1")
    sw = host.add_switch("vs")
    sw.add_port_group(PortGroup("lan"))
    a = host.add_vm("a").add_nic(sw, "lan", mac="00:50:56:00:00:01")
    host.add_vm("b").add_nic(sw, "lan", mac="00:50:56:00:00:02")
    stream = CaptureStream([(a, "a.eth0")], clock=fab.clock, limit=5,
                           flt=compile_filter("broadcast")).start()
    uni = fr.ethernet(fr.mac_to_bytes("00:50:56:00:00:02"), a.mac, 0x0800, bytes(46))
    bc = fr.ethernet(fr.BROADCAST, a.mac, 0x0800, bytes(46))
    for _ in range(8):  # no event loop here: the stream keeps its tap and counts
        a.vnic.send(uni)
        a.vnic.send(bc)
    assert stream.received == [8] and stream.dropped == [3]
    _, recs = read_pcapng(stream.header() + stream.take())
    assert [f for _, _, f, _ in recs] == [bc] * 5
    stream.close()
    assert not a.taps


def test_replay_live_serves_the_scenario_then_its_final_state(tmp_path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    run_dir = tmp_path / "run"
    env = {**os.environ, "HVSIM_RUN_DIR": str(run_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "netsim", "replay",
         str(TOPOLOGIES / "scenarios" / "tagged-on-access.yaml"), "--out", str(tmp_path / "o"),
         "--live", "--port", "0", "--capture-drops"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        texts: list[str] = []
        while time.monotonic() < deadline and not any("PASS" in t for t in texts):
            files = list(run_dir.glob("*.json")) if run_dir.is_dir() else []
            if files:
                url = json.loads(files[0].read_text())["url"]
                with urllib.request.urlopen(f"{url}/api/events", timeout=5) as r:
                    texts = [e["text"] for e in json.load(r)]
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        assert any("tagged-on-access: PASS" in t for t in texts)
        assert any("tagged-on-access +" in t for t in texts)  # drops reached the event log
        with urllib.request.urlopen(f"{url}/api/counters", timeout=5) as r:
            c = json.load(r)["ports"]
        assert c["esx1/s1.eth0"]["drops"] == {"tagged-on-access": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (tmp_path / "o" / "report.json").exists() and (tmp_path / "o" / "drops.pcapng").exists()
    assert not list(run_dir.glob("*.json"))  # the lab left the registry
