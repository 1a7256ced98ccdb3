"""Shared pytest setup: a private mosquitto, and buses on it or in process. Part-specific
fixtures live in each part's own conftest.py."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import settings

from netsim.vds.transport.bus import Bus
from netsim.vds.transport.memory import MemoryBroker, MemoryBus
from netsim.vds.transport.mqtt import MqttBus

# `scripts/test.sh` (and so CI) runs `--hypothesis-profile=fixed`: every property test draws the
# same examples on every run, so a red CI is reproducible and never a new random draw; a plain
# `pytest` keeps exploring fresh examples (that is how new counterexamples are found).
settings.register_profile("fixed", derandomize=True)


@pytest.fixture
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory):
    """A private mosquitto on a free loopback port (never 1883), stopped after the test.

    Yields a `netsim.vds.transport.broker.MosquittoBroker`: `.url`, `.host`, `.port`,
    `.settings(user, password)` for an `MqttBus`, `.restart()`, `.stop()`.
    """
    from netsim.vds.transport.broker import MosquittoBroker

    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class BusKit:
    """Makes clients of one broker (memory or mosquitto) and can restart that broker."""

    kind: str
    make: Callable[..., Bus]
    restart: Callable[[], None]


@pytest.fixture(params=["memory", "mqtt"])
def bus_kit(request: pytest.FixtureRequest) -> BusKit:
    """Every case that takes `bus_kit` runs on the in-process bus and on mosquitto."""
    if request.param == "memory":
        broker = MemoryBroker()

        def make_mem(client_id: str, presence_topic: str | None = None, **kw) -> Bus:
            return MemoryBus(broker, client_id=client_id, presence_topic=presence_topic, **kw)

        return BusKit("memory", make_mem, broker.restart)
    mosq = request.getfixturevalue("mqtt_broker")

    def make_mqtt(client_id: str, presence_topic: str | None = None, **kw) -> Bus:
        return MqttBus(mosq.settings(), client_id=client_id, presence_topic=presence_topic, **kw)

    return BusKit("mqtt", make_mqtt, mosq.restart)
