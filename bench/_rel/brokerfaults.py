"""Broker faults, end to end through the multi-host data plane (BatchSender → MqttBus →
mosquitto → MqttBus → BatchReceiver).

- `broker_killed`: mosquitto is SIGKILLed mid-stream and started again on the same port.
- `host_outage`: one host's connection (through a cuttable TCP proxy) is down for `down_s`
  seconds while the other host stays connected.
- `malformed`: garbage, a truncated batch and an oversized (2 MiB) message on a data topic.
- `impersonation`: with the generated ACL, a host publishes on another host's topic (refused by
  the broker) and on its own topic with another host's name inside the batch (refused by the
  receiver).

The bar for each: nothing raises, both sides are connected again afterwards, frames flow again,
and every frame sent is either received or counted as lost (sequence gaps) or refused.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

from netsim.vds.transport.batch import encode_batch
from netsim.vds.transport.broker import MosquittoBroker, free_loopback_port
from netsim.vds.transport.brokerconf import make_broker_config
from netsim.vds.transport.dataplane import BatchReceiver, BatchSender
from netsim.vds.transport.mqtt import MqttBus
from netsim.vds.transport.topics import Topics

T = Topics("lab")
FRAME = bytes.fromhex("020000000002" "020000000001" "0800") + bytes(50)


class CutProxy:
    """A TCP proxy in front of the broker whose connections can be cut for a while."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_loopback_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self._writers -= {writer, up_w}

    async def cut(self, down_s: float) -> None:
        """Drop every connection and refuse new ones for `down_s` seconds."""
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await asyncio.sleep(down_s)
        await self.start()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        if self._tasks:  # the pipes end on their own once their sockets are gone
            await asyncio.wait(set(self._tasks), timeout=2)


async def _stream(sender: BatchSender, topic: str, seconds: float, rate: int) -> None:
    """Send `rate` frames/s for `seconds`, flushing every 10 ms."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    per = max(1, rate // 100)
    while loop.time() < end:
        for _ in range(per):
            await sender.send(topic, 10, FRAME)
        await sender.flush()
        await asyncio.sleep(0.01)


async def _collect(sub: Any, rx: BatchReceiver, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            msg = await asyncio.wait_for(sub.get(), 0.1)
        except TimeoutError:
            continue
        rx.accept(msg)


async def _pair_run(tx_settings: Any, rx_settings: Any, fault: Any, *, seconds: float,
                    rate: int = 2000) -> dict[str, Any]:
    async with (
        MqttBus(tx_settings, client_id="h1", reconnect_max_s=0.5) as tx_bus,
        MqttBus(rx_settings, client_id="h2", reconnect_max_s=0.5) as rx_bus,
        rx_bus.subscribe(T.unicast_to("h2"), qos=0) as sub,
    ):
        sender = BatchSender(tx_bus, "h1", session=1, max_frames=64)
        rx = BatchReceiver(T.host_of)
        stop = asyncio.Event()
        collector = asyncio.create_task(_collect(sub, rx, stop))
        stream = asyncio.create_task(_stream(sender, T.unicast("h1", "h2"), seconds, rate))
        await asyncio.sleep(seconds / 4)
        await fault()
        await tx_bus.wait_connected(30)
        await rx_bus.wait_connected(30)
        mark = rx.counters.frames
        await stream
        for _ in range(20):  # a last batch after everything settled, so gaps are seen
            await sender.send(T.unicast("h1", "h2"), 10, FRAME)
        await sender.flush()
        # until every frame sent is received or counted lost (a fixed 0.5 s left frames in
        # flight through a loaded broker "unaccounted"), then as long again for extras
        loop = asyncio.get_running_loop()
        settle_by = loop.time() + 30
        def settled() -> bool:
            c = rx.counters
            return c.frames + c.lost_frames >= sender.counters.frames or loop.time() > settle_by

        while not settled():  # noqa: ASYNC110 - counters a task fills
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        stop.set()
        await collector
        c = rx.counters
        return {"sent": sender.counters.frames, "received": c.frames, "lost_counted":
                c.lost_frames, "unaccounted": sender.counters.frames - c.frames - c.lost_frames,
                "received_after_fault": c.frames > mark,
                "tx_connects": tx_bus.counters.connects, "rx_connects": rx_bus.counters.connects,
                "tx_dropped_disconnected": tx_bus.counters.tx_dropped_disconnected}


async def broker_killed(workdir: Path, *, down_s: float = 1.0,
                        seconds: float = 4.0) -> dict[str, Any]:
    """SIGKILL mosquitto mid-stream; start it again on the same port after `down_s`."""
    broker = MosquittoBroker(workdir / "killed")
    broker.start()
    try:
        async def fault() -> None:
            proc = broker._proc  # a crash (SIGKILL), not the launcher's clean stop
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(broker.restart, down_s)

        out = await _pair_run(broker.settings(), broker.settings(), fault, seconds=seconds)
    finally:
        broker.stop()
    out["fault"] = f"broker SIGKILLed, back after {down_s} s"
    out["survived"] = out["unaccounted"] == 0 and out["tx_connects"] >= 2 and \
        out["rx_connects"] >= 2 and out["received_after_fault"]
    return out


async def host_outage(workdir: Path, *, down_s: float = 3.0,
                      seconds: float = 6.0) -> dict[str, Any]:
    """Host h1 loses its connection for `down_s` seconds; h2 stays connected."""
    broker = MosquittoBroker(workdir / "outage")
    broker.start()
    proxy = CutProxy((broker.host, broker.port))
    await proxy.start()
    try:
        via = replace(broker.settings(), port=proxy.port)
        out = await _pair_run(via, broker.settings(), lambda: proxy.cut(down_s),
                              seconds=max(seconds, down_s + 3))
    finally:
        await proxy.close()
        broker.stop()
    out["fault"] = f"host h1 cut off for {down_s} s"
    out["survived"] = out["unaccounted"] == 0 and out["tx_connects"] >= 2 and \
        out["rx_connects"] == 1 and out["received_after_fault"]
    return out


async def malformed(workdir: Path) -> dict[str, Any]:
    """Garbage, a truncated batch and a 2 MiB message on h1's data topic, then a valid batch."""
    broker = MosquittoBroker(workdir / "malformed")
    broker.start()
    try:
        async with (
            MqttBus(broker.settings(), client_id="h1") as tx,
            MqttBus(broker.settings(), client_id="h2") as rxb,
            rxb.subscribe(T.unicast_to("h2"), qos=1) as sub,
        ):
            topic = T.unicast("h1", "h2")
            good = encode_batch("h1", 1, 0, [(10, FRAME)] * 3)
            for payload in (b"\x00garbage", good[:-7], b"HV" + bytes(2 << 20), good):
                await tx.publish(topic, payload, qos=1)
            rx = BatchReceiver(T.host_of)
            for _ in range(4):
                rx.accept(await asyncio.wait_for(sub.get(), 10))
            c = rx.counters
            out = {"bad_batches": c.bad_batches, "frames_after": c.frames,
                   "last_error": c.last_error[:120], "tx_connects": tx.counters.connects,
                   "rx_connects": rxb.counters.connects}
    finally:
        broker.stop()
    out["fault"] = "garbage, truncated and 2 MiB messages on a data topic"
    out["survived"] = out["bad_batches"] == 3 and out["frames_after"] == 3 and \
        out["rx_connects"] == 1
    return out


async def impersonation(workdir: Path) -> dict[str, Any]:
    """h1 publishes as h2: on h2's topic (broker ACL) and with h2's name inside (receiver)."""
    cfg = make_broker_config("lab", ["h1", "h2", "h3"])
    d = workdir / "acl"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in cfg.files.items():
        (d / name).write_text(text)
    broker = MosquittoBroker(d / "run", password_file=d / "passwd", acl_file=d / "acl")
    broker.start()
    pw = cfg.passwords
    try:
        async with (
            MqttBus(broker.settings("h1", pw["h1"]), client_id="h1") as h1,
            MqttBus(broker.settings("h3", pw["h3"]), client_id="h3") as h3,
            h3.subscribe(T.unicast_to("h3"), qos=1) as sub,
        ):
            await h1.publish(T.unicast("h2", "h3"), encode_batch("h2", 1, 0, [(10, FRAME)]),
                             qos=1)
            await h1.publish(T.unicast("h1", "h3"), encode_batch("h2", 1, 0, [(10, FRAME)]),
                             qos=1)
            await h1.publish(T.unicast("h1", "h3"), encode_batch("h1", 1, 0, [(10, FRAME)]),
                             qos=1)
            rx = BatchReceiver(T.host_of)
            got = []
            # read until 1 s of quiet once h1's own batch (published last, so delivered after
            # anything that got through before it) has arrived; a loaded broker may take
            # longer than 1 s to deliver it, so its absence alone waits up to 30 s
            give_up = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    msg = await asyncio.wait_for(sub.get(), 1.0)
                except TimeoutError:
                    if rx.counters.batches or asyncio.get_running_loop().time() > give_up:
                        break
                    continue
                got.append(msg.topic)
                rx.accept(msg)
            c = rx.counters
            out = {"delivered_topics": got, "forged_batches": c.forged_batches,
                   "accepted_batches": c.batches}
    finally:
        broker.stop()
    out["fault"] = "h1 publishing as h2 (topic and batch source)"
    out["survived"] = (T.unicast("h2", "h3") not in got and out["forged_batches"] == 1
                       and out["accepted_batches"] == 1)
    return out


async def run_all(workdir: Path, *, outage_s: float = 3.0) -> list[dict[str, Any]]:
    """Every broker fault, in turn."""
    return [await broker_killed(workdir), await host_outage(workdir, down_s=outage_s),
            await malformed(workdir), await impersonation(workdir)]
