"""Transports between hosts of a distributed fabric: the `Bus` protocol and its implementations.

`memory.MemoryBus` (in-process, default) and `mqtt.MqttBus` (aiomqtt → mosquitto) speak the same
protocol; `batch` is the frame-batch codec and `dataplane` batches frames over a bus.
"""
from netsim.vds.transport.bus import (
    PRESENCE_OFFLINE,
    PRESENCE_ONLINE,
    Bus,
    BusCounters,
    BusMessage,
    DropPolicy,
    Subscription,
    topic_matches,
)

__all__ = [
    "PRESENCE_OFFLINE",
    "PRESENCE_ONLINE",
    "Bus",
    "BusCounters",
    "BusMessage",
    "DropPolicy",
    "Subscription",
    "topic_matches",
]
