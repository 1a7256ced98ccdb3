"""MQTT-only behaviour: URLs, clear errors at the aiomqtt boundary, the broker launcher."""
from __future__ import annotations

from pathlib import Path

import pytest

from netsim.errors import TransportError
from netsim.vds.transport.broker import MosquittoBroker, free_loopback_port
from netsim.vds.transport.mqtt import BrokerSettings, MqttBus, parse_broker_url


def test_broker_urls(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    s = parse_broker_url("mqtt://10.0.0.5:2883", username="esx1", password_file=pw)
    assert (s.host, s.port, s.username, s.password) == ("10.0.0.5", 2883, "esx1", "s3cret")
    assert not s.tls
    assert parse_broker_url("mqtts://broker.lab").port == 8883
    assert parse_broker_url("mqtt://b").port == 1883
    with pytest.raises(TransportError, match="expected mqtt://"):
        parse_broker_url("http://b:1883")
    with pytest.raises(TransportError, match="--password-file"):
        parse_broker_url("mqtt://u:pw@b:1883")
    with pytest.raises(TransportError, match="password file"):
        parse_broker_url("mqtt://b", password_file=tmp_path / "missing")
    with pytest.raises(TransportError, match="TLS CA file"):
        parse_broker_url("mqtt://b", tls_ca=tmp_path / "nope.crt")


async def test_unreachable_broker_is_a_clear_error() -> None:
    port = free_loopback_port()
    bus = MqttBus(BrokerSettings("127.0.0.1", port), client_id="x")
    with pytest.raises(TransportError, match=rf"mqtt://127.0.0.1:{port}.*refused"):
        await bus.__aenter__()


def test_launcher_uses_a_private_port_and_stops(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="1883"):
        MosquittoBroker(tmp_path, port=1883)
    with MosquittoBroker(tmp_path) as b:
        assert b.running and b.port != 1883
        assert f"listener {b.port} 127.0.0.1" in b.config_path.read_text()
    assert not b.running
