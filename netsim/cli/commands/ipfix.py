"""CLI: `hvsim ipfix listen` — a tiny IPFIX collector that prints the flow records it gets.

One line per flow record (or one JSON object per line with --json). A datagram that is not a
well-formed IPFIX message is counted and named in one line on stderr (the first one at once,
all of them in the summary when the collector stops); it never stops the collector.
"""
from __future__ import annotations

import json
import socket
import sys
import time
from typing import Annotated, Any

import typer

from netsim.errors import ConfigError, FrameError

ipfix_app = typer.Typer(help="IPFIX flow export: a collector to see what a vDS exports.",
                        no_args_is_help=True)

_REASONS = {1: "idle", 2: "active", 3: "end", 4: "forced", 5: "no-resources"}


def _line(rec: dict[str, Any], exporter: str, domain: int) -> str:
    v4 = "sourceIPv4Address" in rec
    if not v4 and "sourceIPv6Address" not in rec:  # another exporter's template: as it said
        return f"{exporter} domain {domain}: " + " ".join(f"{k}={v}" for k, v in rec.items())
    fam = "IPv4" if v4 else "IPv6"
    src, dst = rec[f"source{fam}Address"], rec.get(f"destination{fam}Address")
    proto = rec.get("protocolIdentifier", 0)
    sport, dport = rec.get("sourceTransportPort", 0), rec.get("destinationTransportPort", 0)
    if sport or dport:
        src, dst = (f"{src}:{sport}", f"{dst}:{dport}") if v4 else (
            f"[{src}]:{sport}", f"[{dst}]:{dport}")
    icmp = rec.get(f"icmpTypeCode{fam}", 0)
    kind = f" icmp {icmp >> 8}/{icmp & 0xFF}" if proto in (1, 58) else ""
    dur = (rec.get("flowEndMilliseconds", 0) - rec.get("flowStartMilliseconds", 0)) / 1000
    return (f"{src} -> {dst} proto {proto}{kind} vlan {rec.get('vlanId', 0)} "
            f"if {rec.get('ingressInterface', 0)}->{rec.get('egressInterface', 0)} "
            f"packets {rec.get('packetDeltaCount', 0)} octets {rec.get('octetDeltaCount', 0)} "
            f"duration {dur:.3f}s end {_REASONS.get(rec.get('flowEndReason', 0), '?')} "
            f"(domain {domain}, from {exporter})")


def listen(
    port: Annotated[int, typer.Option("--port", help="UDP port (0: any free one).")] = 4739,
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on.")] = "127.0.0.1",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per record.")
                       ] = False,
    count: Annotated[int, typer.Option("--count", help="Stop after this many records "
                                       "(0: never).")] = 0,
    duration: Annotated[float, typer.Option("--duration", help="Stop after this many "
                                            "seconds (0: never).")] = 0.0,
) -> None:
    """Print the flow records IPFIX exporters send to BIND:PORT (loopback by default), one line
    per record. Bad datagrams are counted, never fatal. Stops on Ctrl-C, --count or
    --duration; then prints a one-line summary on stderr.

    Example: hvsim ipfix listen --port 4739 --json --count 10
    """
    from netsim.wire.ipfix import IpfixDecoder

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} outside 0..65535")
    try:
        family = socket.getaddrinfo(bind, port, type=socket.SOCK_DGRAM)[0][0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {bind}:{port}: {exc}") from None
    try:
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
    host, bound = sock.getsockname()[:2]
    print(f"listening for IPFIX on {host}:{bound}", file=sys.stderr, flush=True)
    decoder = IpfixDecoder()
    datagrams = records = bad = unknown = 0
    last_bad = ""
    deadline = time.monotonic() + duration if duration > 0 else None
    try:
        while count <= 0 or records < count:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            sock.settimeout(timeout)
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                break
            datagrams += 1
            exporter = f"{addr[0]}:{addr[1]}"
            try:
                msg = decoder.decode(data, exporter)
            except FrameError as exc:
                bad += 1
                last_bad = f"{exporter}: {exc}"
                if bad == 1:
                    print(f"bad datagram from {last_bad}", file=sys.stderr, flush=True)
                continue
            unknown += msg.unknown_template_records
            for rec in msg.records:
                records += 1
                if as_json:
                    print(json.dumps({"exporter": exporter, "domain": msg.domain_id, **rec},
                                     sort_keys=True), flush=True)
                else:
                    print(_line(rec, exporter, msg.domain_id), flush=True)
                if 0 < count <= records:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    summary = f"ipfix listen: {datagrams} datagrams, {records} records, {bad} bad"
    if unknown:
        summary += f", {unknown} data sets of unknown templates"
    if bad:
        summary += f" (last: {last_bad})"
    print(summary, file=sys.stderr, flush=True)


def register(app: typer.Typer) -> None:
    """Add `hvsim ipfix` to the root app."""
    ipfix_app.command("listen")(listen)
    app.add_typer(ipfix_app, name="ipfix")
