"""Shared pytest setup. Part-specific fixtures live in each part's own conftest.py."""

import pytest


@pytest.fixture
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory):
    """A private mosquitto on a free loopback port (never 1883), stopped after the test.

    Yields a `netsim.transport.broker.MosquittoBroker`: `.url`, `.host`, `.port`,
    `.settings(user, password)` for an `MqttBus`, `.restart()`, `.stop()`.
    """
    from netsim.transport.broker import MosquittoBroker

    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
