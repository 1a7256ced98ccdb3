"""`hvsim host`, `vds-push` and `migrate` as separate processes through a real mosquitto."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from netsim.vds.dswitch import Peers
from netsim.vds.transport.broker import MosquittoBroker
from netsim.vds.transport.brokerconf import make_broker_config
from netsim.vds.transport.mqtt import MqttBus
from netsim.vds.transport.topics import Topics

pytestmark = pytest.mark.interop

TOPO = str(Path(__file__).resolve().parents[2] / "topologies" / "three-hosts.yaml")
HVSIM = [sys.executable, "-m", "netsim"]
T = 15.0


def hvsim(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the CLI; stderr with rich's line wrapping undone."""
    r = subprocess.run([*HVSIM, *args], capture_output=True, text=True, timeout=timeout,
                       check=False)
    r.stderr = " ".join(r.stderr.split())
    return r


async def test_hosts_as_processes_push_migrate_and_a_killed_host_goes_down(mqtt_broker) -> None:
    url = mqtt_broker.url
    topics = Topics("lab")
    # Popen returns at once (only wait() blocks, and that runs in a thread below)
    procs = {
        h: subprocess.Popen(  # noqa: ASYNC220
            [*HVSIM, "host", "--name", h, "--broker", url, TOPO],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for h in ("esx1", "esx2", "esx3")
    }
    try:
        async with MqttBus(mqtt_broker.settings(), client_id="observer") as bus:
            peers = Peers(topics)
            async with bus.subscribe(topics.all_presence, qos=1) as pres, \
                    bus.subscribe(topics.all_status, qos=1) as stat:
                async def feed() -> None:
                    async def one(sub) -> None:
                        async for m in sub:
                            peers.handle(m)
                    await asyncio.gather(one(pres), one(stat))

                task = asyncio.create_task(feed())
                try:
                    await peers.wait_until(lambda: peers.online() == set(procs), within_s=T,
                                           what="three hosts online")
                    r = await asyncio.to_thread(hvsim, "vds-push", "--broker", url, TOPO)
                    assert r.returncode == 0, r.stderr
                    assert "dvs1 v1 runs on esx1, esx2, esx3" in r.stdout  # a result: stdout
                    await peers.wait_until(lambda: peers.host_of_vm("app2") == "esx2",
                                           within_s=T, what="VMs plugged")
                    r = await asyncio.to_thread(hvsim, "migrate", "app2", "--to", "esx3",
                                                "--broker", url)
                    assert r.returncode == 0, r.stderr
                    assert "app2: esx2 → esx3" in r.stdout
                    assert peers.host_of_vm("app2") == "esx3"
                    r = await asyncio.to_thread(hvsim, "migrate", "nosuchvm", "--to", "esx1",
                                                "--broker", url)
                    assert r.returncode == 2 and "runs VM 'nosuchvm'" in r.stderr
                    # a crashed host: its will marks it down at once (socket closed)
                    procs["esx1"].send_signal(signal.SIGKILL)
                    await peers.wait_until(lambda: "esx1" not in peers.online(), within_s=T,
                                           what="esx1 down")
                    r = await asyncio.to_thread(hvsim, "hosts", "--broker", url)
                    rows = {line.split()[1]: line for line in r.stdout.splitlines()
                            if line.startswith("│ esx")}
                    assert "offline" in rows["esx1"] and "online" in rows["esx3"]
                    assert "app2" in rows["esx3"] and "dvs1 v1" in rows["esx3"]
                    # a host told to stop leaves cleanly
                    procs["esx2"].send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(procs["esx2"].wait, 10) == 0
                    await peers.wait_until(lambda: "esx2" not in peers.online(), within_s=T,
                                           what="esx2 down")
                    assert peers.online() == {"esx3"}
                finally:
                    task.cancel()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)


def test_wrong_password_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    cfg = make_broker_config("lab", ["esx1"])
    for name, text in cfg.files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "wrong").write_text("not-it\n")
    with MosquittoBroker(tmp_path / "run", password_file=tmp_path / "passwd",
                         acl_file=tmp_path / "acl") as broker:
        r = hvsim("host", "--name", "esx1", "--broker", broker.url, "--password-file",
                  str(tmp_path / "wrong"), TOPO)
        assert r.returncode == 2
        assert "refused the login of user 'esx1': bad user name or password" in r.stderr
        assert "Traceback" not in r.stderr
        r = hvsim("host", "--name", "esx1", "--broker", broker.url, "--password-file",
                  str(tmp_path / "esx1.password"), "--duration", "0.5", TOPO)
        # logged in; no vDS config was pushed, which it says clearly
        assert r.returncode == 2, r.stderr
        assert "dvs1 version 1 not received" in r.stderr


def test_a_second_host_process_with_the_same_name_is_refused(mqtt_broker) -> None:
    # --duration only bounds a leak (the test kills it): it must outlast the checks below,
    # which take their time on a loaded machine (20 s could run out before them)
    first = subprocess.Popen([*HVSIM, "host", "--name", "esx1", "--broker", mqtt_broker.url,
                              "--duration", "300", TOPO],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):  # until the first one is online
            r = hvsim("hosts", "--broker", mqtt_broker.url)
            if "online" in r.stdout:
                break
        r = hvsim("host", "--name", "esx1", "--broker", mqtt_broker.url, "--duration", "3", TOPO)
        assert r.returncode == 2, r.stderr
        assert "host esx1 is already running in fabric lab (pid " in r.stderr
        assert f"pid {first.pid} " in r.stderr and "Traceback" not in r.stderr
        # the first one was never kicked off: still online, and not told it was taken over
        r = hvsim("hosts", "--broker", mqtt_broker.url)
        assert "online" in r.stdout
        assert first.poll() is None
    finally:
        first.kill()
        _, err = first.communicate(timeout=10)
    assert "taken over" not in err and "Traceback" not in err


@pytest.fixture
def changed_topology(tmp_path: Path) -> Path:
    """three-hosts.yaml with port group App moved from VLAN 100 to 300."""
    changed = tmp_path / "three-hosts-v2.yaml"
    changed.write_text(Path(TOPO).read_text().replace("App: {vlan: 100}", "App: {vlan: 300}"))
    return changed


async def test_stalled_host_is_marked_down_by_keepalive_and_resyncs_config(
    mqtt_broker, changed_topology: Path
) -> None:
    """SIGSTOP keeps the host's TCP connection open but silent: the broker fires its will after
    1.5-2 × keep-alive; on SIGCONT it reconnects and runs the version it missed."""
    url = mqtt_broker.url
    topics = Topics("lab")
    procs = {
        h: subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [*HVSIM, "host", "--name", h, "--broker", url, "--keepalive", "2", TOPO],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for h in ("esx1", "esx2", "esx3")
    }
    try:
        async with MqttBus(mqtt_broker.settings(), client_id="observer") as bus:
            peers = Peers(topics)
            async with bus.subscribe(topics.all_presence, qos=1) as pres, \
                    bus.subscribe(topics.all_status, qos=1) as stat:
                async def one(sub) -> None:
                    async for m in sub:
                        peers.handle(m)

                task = asyncio.gather(one(pres), one(stat))
                try:
                    await peers.wait_until(lambda: peers.online() == set(procs), within_s=T,
                                           what="hosts online")
                    r = await asyncio.to_thread(hvsim, "vds-push", "--broker", url, TOPO)
                    assert r.returncode == 0, r.stderr
                    procs["esx2"].send_signal(signal.SIGSTOP)
                    # mosquitto 2.0 fires the will 1.5-2× the keep-alive (2 s) after the last
                    # packet; a loaded CI machine adds seconds, so the bound is generous
                    await peers.wait_until(lambda: "esx2" not in peers.online(), within_s=20,
                                           what="esx2 down by keep-alive")
                    r = await asyncio.to_thread(hvsim, "vds-push", "--broker", url,
                                                str(changed_topology), "--wait", "0")
                    assert r.returncode == 0, r.stderr
                    procs["esx2"].send_signal(signal.SIGCONT)
                    await peers.wait_until(
                        lambda: "esx2" in peers.online() and peers.version("esx2", "dvs1") == 2,
                        within_s=T, what="esx2 back on v2")
                    assert 300 in peers.hosts["esx2"].vds["dvs1"][1]
                finally:
                    task.cancel()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.communicate(timeout=10)


def test_hvsim_run_with_broker_pings_across_hosts_and_captures(mqtt_broker, tmp_path: Path
                                                               ) -> None:
    out = tmp_path / "run"
    r = hvsim("run", TOPO, "--out", str(out), "--broker", mqtt_broker.url, "--duration", "0.1")
    assert r.returncode == 0, r.stderr + r.stdout
    text = " ".join(r.stdout.split())
    assert "pingall across hosts: 12/12 answered (18 pairs have no route)" in text
    files = sorted(p.name for p in out.iterdir())
    assert files == ["esx1.pcapng", "esx2.pcapng", "esx3.pcapng"]
    assert (out / "esx2.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng SHB


def test_a_host_still_waiting_for_its_configuration_leaves_on_sigterm(mqtt_broker) -> None:
    proc = subprocess.Popen(
        [*HVSIM, "host", "--name", "esx1", "--broker", mqtt_broker.url, TOPO],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # wait for its "waiting for dvs1's configuration" line on stderr (no vds-push comes)
        assert proc.stderr is not None
        seen = ""
        for line in proc.stderr:
            seen += line
            if "waiting for" in line:
                break
        assert "waiting for" in seen, seen
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        out = seen + proc.stderr.read()
        assert rc == 0, out
        assert "leaving before any configuration arrived" in " ".join(out.split())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_multihost_never_takes_over_live_hosts_and_results_go_to_stdout(
        mqtt_broker) -> None:
    """The README's order: three `hvsim host` processes, then `hvsim multihost` on the same
    broker. It must refuse (one line, exit 2) instead of marking the live hosts offline and
    letting a second `hvsim host --name esx1` take esx1 over; vds-push and migrate print their
    results on stdout; a host logs the VLANs `hvsim hosts` shows."""
    url = mqtt_broker.url
    topics = Topics("lab")
    procs = {
        h: subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [*HVSIM, "host", "--name", h, "--broker", url, TOPO],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for h in ("esx1", "esx2", "esx3")
    }
    try:
        async with MqttBus(mqtt_broker.settings(), client_id="observer") as bus:
            peers = Peers(topics)
            async with bus.subscribe(topics.all_presence, qos=1) as pres, \
                    bus.subscribe(topics.all_status, qos=1) as stat:
                async def one(sub) -> None:
                    async for m in sub:
                        peers.handle(m)

                task = asyncio.gather(one(pres), one(stat))
                try:
                    await peers.wait_until(lambda: peers.online() == set(procs), within_s=T,
                                           what="three hosts online")
                    r = await asyncio.to_thread(hvsim, "vds-push", "--broker", url, TOPO)
                    assert r.returncode == 0, r.stderr
                    assert r.stdout.startswith("dvs1 v1 runs on esx1, esx2, esx3 (")
                    assert "runs on" not in r.stderr
                    await peers.wait_until(lambda: peers.host_of_vm("app2") == "esx2",
                                           within_s=T, what="VMs plugged")
                    # the in-process run refuses, naming every live host, and touches nothing
                    r = await asyncio.to_thread(hvsim, "multihost", TOPO, "--broker", url)
                    assert r.returncode == 2, r.stdout + r.stderr
                    assert r.stdout == ""
                    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
                    for h in procs:
                        assert f"host {h} is already running in fabric lab (pid " in r.stderr
                    assert "another --fabric" in r.stderr
                    await asyncio.sleep(1.0)
                    assert peers.online() == set(procs)  # nobody was marked offline
                    r = await asyncio.to_thread(hvsim, "run", TOPO, "--broker", url,
                                                "--out", "/nonexistent-not-used")
                    assert r.returncode == 2 and "already running" in r.stderr
                    # and so a second esx1 is still refused, the first one untouched
                    r = await asyncio.to_thread(hvsim, "host", "--name", "esx1", "--broker",
                                                url, "--duration", "3", TOPO)
                    assert r.returncode == 2 and "already running" in r.stderr
                    # migrate still works (its result on stdout)
                    r = await asyncio.to_thread(hvsim, "migrate", "app2", "--to", "esx3",
                                                "--broker", url)
                    assert r.returncode == 0, r.stderr
                    assert r.stdout.startswith("app2: esx2 → esx3 in ")
                    # under its own fabric name the in-process run goes ahead
                    r = await asyncio.to_thread(hvsim, "multihost", TOPO, "--broker", url,
                                                "--fabric", "mine")
                    assert r.returncode == 0, r.stderr
                    assert "ping between VMs across hosts" in r.stdout
                    assert peers.online() == set(procs)
                    # the status `hvsim hosts` shows
                    assert sorted(peers.hosts["esx1"].vds["dvs1"][1]) == [100, 200]
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        logs = {h: " ".join(p.communicate(timeout=15)[1].split()) for h, p in procs.items()}
        for h, p in procs.items():
            assert p.returncode == 0, logs[h]
            assert "taken over" not in logs[h]
        # what the host says it runs matches what `hvsim hosts` showed
        assert "esx1: 2 VMs on dvs1 v1 (VLANs [100, 200])" in logs["esx1"]
        assert "VLANs []" not in logs["esx1"]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)


def test_host_name_ranges_expand_as_written() -> None:
    from netsim.errors import ConfigError
    from netsim.vds.multihost import expand_host_names

    assert expand_host_names("esx[1-3]") == ["esx1", "esx2", "esx3"]
    assert expand_host_names("esx[008-010].lab,db1") == ["esx008.lab", "esx009.lab",
                                                         "esx010.lab", "db1"]
    for bad in ("esx[3-1]", "esx[1-3", "esx[1-2],esx2", "esx[1-5000]", "a,,b"):
        with pytest.raises(ConfigError):
            expand_host_names(bad)


async def test_many_hosts_per_process_by_range_and_by_file(mqtt_broker, tmp_path: Path) -> None:
    url = mqtt_broker.url
    topics = Topics("lab")
    names = tmp_path / "names"
    names.write_text("# the third host\nesx3\n")
    procs = [subprocess.Popen(  # noqa: ASYNC220
        [*HVSIM, "host", *args, "--broker", url, TOPO],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in (["--name", "esx[1-2]"], ["--names-from", str(names)])]
    try:
        async with MqttBus(mqtt_broker.settings(), client_id="observer") as bus:
            peers = Peers(topics)
            async with bus.subscribe(topics.all_presence, qos=1) as pres, \
                    bus.subscribe(topics.all_status, qos=1) as stat:
                async def feed() -> None:
                    async def one(sub) -> None:
                        async for m in sub:
                            peers.handle(m)
                    await asyncio.gather(one(pres), one(stat))

                task = asyncio.create_task(feed())
                try:
                    await peers.wait_until(
                        lambda: peers.online() == {"esx1", "esx2", "esx3"}, within_s=T,
                        what="three hosts in two processes online")
                    r = await asyncio.to_thread(hvsim, "vds-push", "--broker", url, TOPO)
                    assert r.returncode == 0, r.stderr
                    assert "dvs1 v1 runs on esx1, esx2, esx3" in " ".join(r.stdout.split())
                    await peers.wait_until(lambda: peers.host_of_vm("app2") == "esx2",
                                           within_s=T, what="VMs plugged")
                    r = await asyncio.to_thread(hvsim, "migrate", "app2", "--to", "esx3",
                                                "--broker", url)
                    assert r.returncode == 0, r.stderr
                    assert peers.host_of_vm("app2") == "esx3"
                    r = await asyncio.to_thread(hvsim, "hosts", "--broker", url, "--summary")
                    cells = {line.split("│")[1].strip(): line.split("│")[2:4]
                             for line in r.stdout.splitlines() if line.count("│") == 4}
                    assert cells["online"][0].strip() == "3", r.stdout
                    assert cells["offline"][0].strip() == "0"
                    assert [c.strip() for c in cells["dvs1 v1"]] == ["3", "esx1, esx2, esx3"]
                    # SIGTERM to the process of two hosts: both leave cleanly
                    procs[0].send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(procs[0].wait, 15) == 0
                    await peers.wait_until(lambda: peers.online() == {"esx3"}, within_s=T,
                                           what="esx1 and esx2 down")
                finally:
                    task.cancel()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)


def test_host_names_not_in_the_topology_are_one_line(tmp_path: Path) -> None:
    r = hvsim("host", "--name", "esx[3-5]", "--broker", "mqtt://127.0.0.1:9", TOPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no host esx4, esx5 in the topology (3 hosts)" in r.stderr
