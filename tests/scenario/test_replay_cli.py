"""`hvsim replay --pcap`: interfaces that name no port, non-Ethernet captures, what it did, and
an --out directory reused from an earlier run."""
from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

from netsim.lab.fabric import capture_file_name
from netsim.scenario.model import parse_scenario
from netsim.scenario.runner import run_scenario
from netsim.wire.framespec import build_frame
from netsim.wire.pcapread import read_capture

from .test_examples import ROOT, hvsim
from .test_pcapread import write_pcapng_ns

XEN = str(ROOT / "topologies" / "xen-vlans.yaml")
T = 1_700_000_000 * 10**9
F1 = build_frame({"eth": {"src": "00:16:3e:00:05:01", "dst": "00:16:3e:00:05:02"},
                  "ipv4": {"src": "10.0.5.1", "dst": "10.0.5.2"}, "udp": {"dport": 53},
                  "payload": 20})
TAGGED = build_frame({"eth": {"src": "00:16:3e:00:05:01"}, "vlan": 5, "payload": 46})


def test_every_interface_without_a_port_is_named_once_with_the_cli_flag(tmp_path: Path) -> None:
    write_pcapng_ns(tmp_path / "m.pcapng", [(T, F1, 0), (T + 1, F1, 1), (T + 2, F1, 2)],
                    ["vif1.0", "nope0", "xen1/xenbr0"])
    res = hvsim("replay", "--pcap", "m.pcapng", XEN, "--out", "out", cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert "\n" not in err and "Traceback" not in err and "AttributeError" not in err, err
    assert "'nope0' (no such port)" in err
    assert "'xen1/xenbr0' (a StandardSwitch, not a port or VM)" in err
    assert "give --into PORT" in err and "`into:`" not in err
    assert not (tmp_path / "out" / "report.json").exists()


async def test_scenario_file_names_its_own_key(tmp_path: Path) -> None:
    import pytest

    from netsim.errors import ScenarioError
    write_pcapng_ns(tmp_path / "m.pcapng", [(T, F1, 0)], ["xen1/xenbr0"])
    scn = parse_scenario(f"topology: {XEN}\nsteps:\n  - replay: {{pcap: m.pcapng}}\n",
                         "s.yaml", base=tmp_path)
    with pytest.raises(ScenarioError, match=r"s\.yaml:3: steps\[0\]\.replay: m\.pcapng: .*"
                                            r"'xen1/xenbr0' \(a StandardSwitch.*give `into:`"):
        await run_scenario(scn)


def test_replay_prints_injected_delivered_and_dropped(tmp_path: Path) -> None:
    write_pcapng_ns(tmp_path / "t.pcapng", [(T, F1, 0), (T + 10**6, TAGGED, 0)], ["vif1.0"])
    res = hvsim("replay", "--pcap", "t.pcapng", XEN, "--speed", "max", "--out", "out",
                cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "replayed 2 frames" in out
    assert "delivered" in out and "xen1/vif2.0" in out          # F1 reached vm2
    assert "tagged-on-access" in out and "xen1/vif1.0 1" in out  # the tagged one, dropped


def test_mixed_interfaces_replay_the_ethernet_ones_and_report_the_rest(tmp_path: Path) -> None:
    def blk(t: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", t, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    def idb(lt: int, name: str) -> bytes:
        n = name.encode()
        return blk(1, struct.pack("<HHI", lt, 0, 0) + struct.pack("<HH", 2, len(n)) + n
                   + b"\0" * (-len(n) % 4) + b"\0\0\0\0")

    def epb(i: int, f: bytes) -> bytes:
        return blk(6, struct.pack("<IIIII", i, 0, 1, len(f), len(f)) + f)

    ip = F1[14:]
    sll = struct.pack(">HHH", 4, 1, 6) + F1[6:12] + b"\0\0" + b"\x08\x00" + ip
    data = (blk(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)) + idb(1, "vif1.0")
            + idb(113, "any") + epb(0, F1) + epb(1, sll))
    (tmp_path / "mixed.pcapng").write_bytes(data)
    res = hvsim("replay", "--pcap", "mixed.pcapng", "--into", "vif1.0", XEN, "--out", "o1",
                cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "replayed 1 frames" in res.stdout
    assert "skipped 1: interface 1 'any': link type 113 (LINUX_SLL)" in res.stdout
    rep = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert rep["steps"][0]["skipped"] == {
        "interface 1 'any': link type 113 (LINUX_SLL), not Ethernet, give --dlt-ethernet": 1}
    # --dlt-ethernet: the cooked packet goes in too, as an Ethernet frame to --dst-mac
    res = hvsim("replay", "--pcap", "mixed.pcapng", "--into", "vif1.0", XEN, "--out", "o2",
                "--dlt-ethernet", "--dst-mac", "00:16:3e:00:05:02", "--capture", "vif2.0",
                cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "replayed 2 frames" in res.stdout
    assert [f for _, f, _ in read_capture(tmp_path / "o2" / "vif2.0.pcapng")] == [F1, F1]
    res = hvsim("replay", "--pcap", "mixed.pcapng", "--into", "vif1.0", XEN, "--out", "o3",
                "--dlt-ethernet", cwd=tmp_path)
    assert res.returncode == 2 and "give --dst-mac with --dlt-ethernet" in res.stderr


def test_capture_files_of_similar_ports_are_told_apart() -> None:
    assert capture_file_name("vif1.0") == "vif1.0.pcapng"
    names = ["core/esx1.vmnic0", "esx1/vmnic0", "esx1.vmnic0", "esx1_vmnic0", "a_b/c", "a/b_c"]
    files = [capture_file_name(n) for n in names]
    assert len(set(files)) == len(files), files
    assert capture_file_name("esx1/vmnic0") == "esx1%2Fvmnic0.pcapng"


def test_capture_file_keeps_the_port_name_for_tshark(tmp_path: Path) -> None:
    topo = tmp_path / "t.yaml"
    host = ("  {h}:\n    type: esxi\n    pifs: {{vmnic0: {{}}}}\n"
            "    switches: {{vSwitch0: {{uplinks: [vmnic0]}}}}\n"
            "    port_groups: {{pg: {{switch: vSwitch0}}}}\n"
            "    vms: {{{h}vm: {{nics: [{{network: pg}}]}}}}\n")
    topo.write_text("hosts:\n" + host.format(h="esx1") + host.format(h="esx2")
                    + "physical:\n  core:\n    ports:\n"
                    "      esx1.vmnic0: {mode: access, vlan: 1}\n"
                    "      esx2.vmnic0: {mode: access, vlan: 1}\n")
    write_pcapng_ns(tmp_path / "t.pcapng", [(T, F1, 0)], ["esx1vm.eth0"])
    res = hvsim("replay", "--pcap", "t.pcapng", str(topo), "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    files = sorted(p.name for p in (tmp_path / "out").glob("*.pcapng"))
    assert "esx1%2Fvmnic0.pcapng" in files and "esx1.vmnic0.pcapng" in files, files
    names = subprocess.run(["tshark", "-r", str(tmp_path / "out" / "esx1%2Fvmnic0.pcapng"),
                            "-T", "fields", "-e", "frame.interface_name"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert names == ["esx1/vmnic0"]


def test_reused_out_directory_loses_the_previous_runs_captures(tmp_path: Path) -> None:
    write_pcapng_ns(tmp_path / "t.pcapng", [(T, F1, 0)], ["vif1.0"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.pcapng").write_bytes(b"not hvsim's")
    res = hvsim("replay", "--pcap", "t.pcapng", XEN, "--out", "out", cwd=tmp_path)
    assert res.returncode == 0
    assert (tmp_path / "out" / "vif3.0.pcapng").is_file()
    res = hvsim("replay", "--pcap", "t.pcapng", XEN, "--out", "out", "--capture", "vif2.0",
                cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["mine.pcapng", "report.json", "vif2.0.pcapng"]   # theirs is kept
    assert "removed 14 file(s) of the previous run" in res.stderr
