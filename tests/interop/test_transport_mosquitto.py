"""`hvsim broker-config` output against a real mosquitto: logins, refusals, and the ACL."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from netsim.errors import TransportError
from netsim.vds.transport.broker import MosquittoBroker
from netsim.vds.transport.brokerconf import make_broker_config, verify_password
from netsim.vds.transport.claim import HostClaim, check_host_free
from netsim.vds.transport.mqtt import MqttBus
from netsim.vds.transport.topics import Topics

pytestmark = pytest.mark.interop


@pytest.fixture
def secured(tmp_path: Path):
    """A mosquitto running the generated password file and ACL for hosts esx1, esx2."""
    cfg = make_broker_config("lab", ["esx1", "esx2"])
    for name, text in cfg.files.items():
        (tmp_path / name).write_text(text)
    broker = MosquittoBroker(
        tmp_path / "run", password_file=tmp_path / "passwd", acl_file=tmp_path / "acl"
    )
    with broker:
        yield broker, cfg


async def test_generated_logins_work_and_a_wrong_password_is_refused_clearly(secured) -> None:
    broker, cfg = secured
    async with MqttBus(broker.settings("esx1", cfg.passwords["esx1"]), client_id="esx1") as bus:
        assert bus.connected
    bad = MqttBus(broker.settings("esx1", "not-the-password"), client_id="esx1")
    refused = "refused the login of user 'esx1': bad user name or password"
    with pytest.raises(TransportError, match=refused):
        await bad.__aenter__()
    anon = MqttBus(broker.settings(), client_id="anon")
    with pytest.raises(TransportError, match="anonymous"):
        await anon.__aenter__()


async def test_acl_lets_a_host_publish_only_its_own_topics(secured) -> None:
    broker, cfg = secured
    t = Topics("lab")
    pw = cfg.passwords
    async with (
        MqttBus(broker.settings("esx2", pw["esx2"]), client_id="esx2") as esx2,
        MqttBus(broker.settings("esx1", pw["esx1"]), client_id="esx1") as esx1,
        MqttBus(broker.settings("vcenter", pw["vcenter"]), client_id="vc") as vc,
        esx2.subscribe(t.all, qos=1) as seen,
    ):
        await esx1.publish(t.unicast("esx2", "esx2"), b"forged as esx2", qos=1)
        await esx1.publish(t.vds_config("dvs1"), b"forged config", qos=1)
        await esx1.publish(t.unicast("esx1", "esx2"), b"own topic")
        await vc.publish(t.vds_config("dvs1"), b"real config", qos=1)
        got = []
        while len(got) < 2:
            got.append((await asyncio.wait_for(seen.get(), 5)).payload)
        assert got == [b"own topic", b"real config"]
        await asyncio.sleep(0.2)
        assert len(seen) == 0


async def test_a_host_whose_login_the_acl_denies_its_own_topics_is_refused(secured) -> None:
    broker, cfg = secured
    # esx2's login may not write under host/esx1/: running esx1 with it must stop at once
    async with MqttBus(broker.settings("esx2", cfg.passwords["esx2"]), client_id="p") as probe:
        with pytest.raises(TransportError, match=r"host esx1 of fabric lab: the broker does "
                           r"not let this login publish and read its own topics "
                           r"hvsim/lab/host/esx1/# .*check the broker's ACL"):
            await check_host_free(probe, Topics("lab"), "esx1", HostClaim.new(), within_s=1)
    async with MqttBus(broker.settings("esx1", cfg.passwords["esx1"]), client_id="q") as probe:
        await check_host_free(probe, Topics("lab"), "esx1", HostClaim.new(), within_s=5)


def test_hashes_match_mosquitto_passwd(tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "alice", "wonder"], check=True)
    hashed = pwfile.read_text().strip().split(":", 1)[1]
    assert verify_password("wonder", hashed) and not verify_password("wonderland", hashed)


def test_cli_writes_private_files(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    r = subprocess.run(
        [sys.executable, "-m", "netsim", "broker-config", "--fabric", "lab2",
         "--host", "xen1", "--host", "xen2", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "acl", "mosquitto.conf", "passwd", "vcenter.password", "xen1.password", "xen2.password"]
    assert (out / "xen1.password").stat().st_mode & 0o077 == 0
    assert (out / "passwd").stat().st_mode & 0o007 == 0
    assert "topic write hvsim/lab2/host/xen2/#" in (out / "acl").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "netsim", "broker-config", "--host", "a/b", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert bad.returncode == 2 and "host name 'a/b'" in bad.stderr


def _make_lab_ca(d: Path) -> None:
    """The README's openssl commands: a private CA and a broker certificate for 127.0.0.1."""
    def sh(*args: str) -> None:
        subprocess.run(args, cwd=d, check=True, capture_output=True)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-subj", "/CN=hvsim lab CA", "-keyout", "ca.key", "-out", "ca.crt")
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=broker.lab",
       "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=DNS:broker.lab,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")


async def test_tls_listener_with_a_lab_ca(tmp_path: Path) -> None:
    from netsim.vds.transport.broker import TlsFiles
    from netsim.vds.transport.mqtt import parse_broker_url

    _make_lab_ca(tmp_path)
    tls = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    with MosquittoBroker(tmp_path / "run", tls=tls) as broker:
        assert broker.url.startswith("mqtts://")
        settings = parse_broker_url(broker.url, tls_ca=tmp_path / "ca.crt")
        async with MqttBus(settings, client_id="tls") as bus, bus.subscribe("lab/x") as sub:
            await bus.publish("lab/x", b"over tls")
            assert (await asyncio.wait_for(sub.get(), 5)).payload == b"over tls"
        untrusted = MqttBus(parse_broker_url(broker.url), client_id="tls2")  # system CAs only
        with pytest.raises(TransportError, match="certificate verify failed"):
            await untrusted.__aenter__()


@pytest.fixture
def generated_broker(tmp_path: Path):
    """mosquitto running the conf `broker-config` writes, with only the listener moved off 1883
    (and the run-as user set, since tests run as whoever they run as)."""
    import getpass

    from netsim.vds.transport.broker import free_loopback_port

    out = tmp_path / "broker"
    r = subprocess.run([sys.executable, "-m", "netsim", "broker-config", "--host", "esx1",
                        "--out", str(out)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    port = free_loopback_port()
    conf = (out / "mosquitto.conf").read_text()
    assert "listener 1883\n" in conf
    conf = conf.replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
    (out / "test.conf").write_text(conf + f"user {getpass.getuser()}\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(out / "test.conf")], stderr=subprocess.PIPE)
    try:
        yield port, (out / "esx1.password").read_text().strip()
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


async def test_generated_mosquitto_conf_runs_as_written(generated_broker) -> None:
    from netsim.vds.transport.mqtt import BrokerSettings

    port, password = generated_broker
    settings = BrokerSettings("127.0.0.1", port, "esx1", password)
    for _ in range(100):  # until mosquitto listens
        try:
            async with MqttBus(settings, client_id="esx1") as bus:
                assert bus.connected
            return
        except TransportError as exc:
            if "refused the login" in str(exc):
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("the generated conf never accepted esx1")
