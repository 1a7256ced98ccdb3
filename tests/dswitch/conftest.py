"""Bus fixtures: every distributed-switch case runs on the in-process bus and on mosquitto."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from netsim.transport.bus import Bus
from netsim.transport.memory import MemoryBroker, MemoryBus
from netsim.transport.mqtt import MqttBus


@dataclass
class BusKit:
    """Makes clients of one broker (memory or mosquitto) and can restart that broker."""

    kind: str
    make: Callable[..., Bus]
    restart: Callable[[], None]


@pytest.fixture(params=["memory", "mqtt"])
def bus_kit(request: pytest.FixtureRequest) -> BusKit:
    if request.param == "memory":
        broker = MemoryBroker()

        def make_mem(client_id: str, presence_topic: str | None = None, **kw) -> Bus:
            return MemoryBus(broker, client_id=client_id, presence_topic=presence_topic, **kw)

        return BusKit("memory", make_mem, broker.restart)
    mosq = request.getfixturevalue("mqtt_broker")

    def make_mqtt(client_id: str, presence_topic: str | None = None, **kw) -> Bus:
        return MqttBus(mosq.settings(), client_id=client_id, presence_topic=presence_topic, **kw)

    return BusKit("mqtt", make_mqtt, mosq.restart)
