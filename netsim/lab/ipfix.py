"""The IPFIX exporting process of a switch: ended flows of its `FlowMeter`, as RFC 7011
messages over UDP to the configured collector.

Exports run when a flow times out on the fabric's clock (scheduled by the next deadline, so a
virtual clock crosses idle time in one jump); when the exporter stops, every flow still open is
exported (flowEndReason 4). A send that fails is counted (`send_errors`), never raised into the
data plane; the sequence number counts every record sent, as RFC 7011 §3.1 asks, so a collector
can see what it lost.
"""
from __future__ import annotations

import ipaddress
import socket

from netsim.clock import NS_PER_S, sweep_by_deadline
from netsim.dataplane.flowmeter import FlowMeter
from netsim.wire.ipfix import FlowRecord, encode_messages


class IpfixExporter:
    """Sends what `meter` ends to `meter.config`'s collector; run `run()` as a task."""

    def __init__(self, meter: FlowMeter) -> None:
        self.meter = meter
        cfg = meter.config
        self._family = socket.AF_INET6 if ipaddress.ip_address(cfg.collector_ip).version == 6 \
            else socket.AF_INET
        self.target = (cfg.collector_ip, cfg.collector_port)
        self.sock: socket.socket | None = None  # opened by the first export
        self.seq = 0
        self.messages = 0
        self.records = 0
        self.send_errors = 0

    def send(self, records: list[FlowRecord]) -> None:
        """Export `records` now (one datagram per message)."""
        if not records:
            return
        cfg = self.meter.config
        msgs = encode_messages(records, export_time=self.meter.clock.now_ns() // NS_PER_S,
                               seq=self.seq, domain_id=cfg.observation_domain_id)
        if self.sock is None:
            self.sock = socket.socket(self._family, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
        for m in msgs:
            try:
                self.sock.sendto(m, self.target)
                self.messages += 1
            except OSError:
                self.send_errors += 1
        self.seq = (self.seq + len(records)) & 0xFFFFFFFF
        self.records += len(records)

    def sweep(self) -> None:
        """Export the flows that have timed out."""
        self.send(self.meter.expire())

    def close(self) -> None:
        """Export every open flow and release the socket."""
        try:
            self.send(self.meter.flush())
        finally:
            if self.sock is not None:
                self.sock.close()
                self.sock = None

    async def run(self) -> None:
        """Export flows as they time out, until cancelled; then export the rest."""
        try:
            await sweep_by_deadline(self.meter.clock, self.meter.next_due_ns, self.sweep,
                                    self.meter.wait_for_flow, min_gap_s=1.0)
        finally:
            self.close()
