"""The live server: a running lab behind a small HTTP API, a WebSocket of counter deltas, and a
page that draws it (aiohttp; containerlab's API server and TopoViewer are the models).

    GET  /                         the page (topology picture, live port rates and drops, MAC
                                   tables, event log, link down/up, capture download, trace)
    GET  /api/topology             ports (name, kind, switch, cable peer) and the topology graph
    GET  /api/topology.svg         the `hvsim draw` picture of the topology
    GET  /api/ports                every port, for capture tools
    GET  /api/counters             every port's counters
    GET  /api/mac/SWITCH           a switch's MAC table
    GET  /api/events               the event log (link changes, drops by reason, captures, ...)
    GET  /api/neighbors            each uplink's and physical port's CDP/LLDP neighbour (the
                                   table `hvsim run --neighbors` prints)
    POST /api/link                 {"port": "esx1/vmnic0", "up": false}
    POST /api/trace                {"from": "vm1", "frame": "{eth: {dst: ...}}" or hex}
    GET  /api/capture/PORTS.pcapng live pcapng of PORTS (comma-separated), streamed;
                                   ?filter=hvsim filter&duration=S&limit=N
    GET  /api/ws                   WebSocket: counter deltas and new events, at most 10 a second

Access: bound to loopback (the default, 127.0.0.1:8731) the server answers requests whose Host
is a loopback name (so a web page elsewhere cannot reach it by DNS rebinding). Bound to anything
else it needs a token: requests without it (`Authorization: Bearer T`, `?token=T`, or the cookie
the page sets) get 401. A token given on loopback is enforced too.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import secrets
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiohttp import WSMsgType, web

from netsim.dataplane.port import Port
from netsim.errors import ConfigError, NetsimError
from netsim.lab.trace import trace_frame
from netsim.live import registry
from netsim.live.page import PAGE
from netsim.live.stream import DEFAULT_LIMIT, CaptureStream
from netsim.wire.filters import compile_filter

DEFAULT_PORT = 8731
#: the WebSocket's update period: at most 10 messages a second
WS_PERIOD_S = 0.1
EVENTS_KEPT = 1000
_STREAM_LIMIT_MAX = 1 << 20


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh random access token."""
    return secrets.token_urlsafe(24)


class LiveServer:
    """Serves one running fabric (see the module docstring). `async with LiveServer(fab, ...)`
    or `await start()` / `await close()`; `url` is where it listens once started.

    `lab` (a `netsim.lab.lab.Lab`) adds the topology picture and graph; `name` is the lab's
    name in `hvsim capture` and Wireshark (`hvsim: NAME/PORT`); `announce` writes the lab's
    registry file so those tools find it.
    """

    def __init__(
        self,
        fab: Any,
        *,
        lab: Any = None,
        name: str = "lab",
        bind: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        announce: bool = True,
    ) -> None:
        if not is_loopback(bind) and not token:
            raise ConfigError(f"refusing to serve on {bind} without a token: anything but "
                              "loopback needs one (give --token, or let hvsim make one)")
        self.fab = fab
        self.lab = lab
        self.name = registry.check_name(name)
        self.bind = bind
        self.port = port
        self.token = token or None
        self.announce = announce
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self._event_seq = 0
        self._runner: web.AppRunner | None = None
        self._streams: set[CaptureStream] = set()
        self._watched: list[Port] = []
        self._ticker: asyncio.Task[None] | None = None
        self._last_drops: dict[str, dict[str, int]] = {}
        self._svg: bytes | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> str:
        """Listen, announce the lab, start the event ticker; returns the URL."""
        app = web.Application(middlewares=[self._guard])
        r = app.router
        r.add_get("/", self._page)
        r.add_get("/api/topology", self._topology)
        r.add_get("/api/topology.svg", self._topology_svg)
        r.add_get("/api/ports", self._ports)
        r.add_get("/api/counters", self._counters)
        r.add_get("/api/mac/{switch:.+}", self._mac)
        r.add_get("/api/events", self._events)
        r.add_get("/api/neighbors", self._neighbors)
        r.add_post("/api/link", self._link)
        r.add_post("/api/trace", self._trace)
        r.add_get("/api/capture/{ports:.+}.pcapng", self._capture)
        r.add_get("/api/ws", self._ws)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"cannot listen on {self.bind}:{self.port}: {exc.strerror}"
                              ) from exc
        server = site._server
        if server is not None and server.sockets:  # the real port when 0 was asked for
            self.port = server.sockets[0].getsockname()[1]
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        self.url = f"http://{host}:{self.port}"
        for p in self.fab.ports():
            p.on_link_change(self._link_event)
            self._watched.append(p)
        self._last_drops = {p.path: dict(p.counters.drops) for p in self.fab.ports()}
        self._ticker = asyncio.create_task(self._tick(), name="live server events")
        if self.announce:
            registry.register(registry.LabEntry(self.name, self.url, self.token, os.getpid()))
        self.event("server", f"serving lab {self.name} on {self.url}")
        return self.url

    async def close(self) -> None:
        """Stop streams, the ticker and the listener; remove the registry file."""
        for s in list(self._streams):
            s.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for p in self._watched:
            p.off_link_change(self._link_event)
        self._watched.clear()
        if self.announce:
            registry.unregister(self.name)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LiveServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- events ------------------------------------------------------------------------------
    def event(self, kind: str, text: str) -> None:
        """Add a line to the event log."""
        self._event_seq += 1
        self.events.append({"seq": self._event_seq, "t_ns": self.fab.clock.now_ns(),
                            "kind": kind, "text": text})

    def _link_event(self, port: Port) -> None:
        self.event("link", f"{self.fab.short_name(port)} link "
                           f"{'up' if port.link_up else 'down'}")

    async def _tick(self) -> None:
        """Once a second: new drops by port and reason into the event log."""
        while True:
            await asyncio.sleep(1.0)
            for p in self.fab.ports():
                old = self._last_drops.get(p.path, {})
                new = p.counters.drops
                for reason, n in new.items():
                    d = n - old.get(reason, 0)
                    if d > 0:
                        self.event("drops", f"{self.fab.short_name(p)}: {reason} +{d}")
                self._last_drops[p.path] = dict(new)

    # -- access ------------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is not None:
            auth = request.headers.get("Authorization", "")
            given = (auth[7:] if auth.startswith("Bearer ") else "") or request.query.get(
                "token", "") or request.cookies.get("hvsim_token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                raise web.HTTPUnauthorized(text="hvsim: this lab needs its access token "
                                                "(?token=..., or Authorization: Bearer ...)\n")
        elif not is_loopback((request.host or "").rsplit(":", 1)[0].strip("[]")):
            raise web.HTTPForbidden(text="hvsim: a lab served without a token answers only "
                                         "requests to a loopback host name\n")
        try:
            resp = await handler(request)
        except NetsimError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if self.token is not None and request.path == "/" and "token" in request.query:
            resp.set_cookie("hvsim_token", self.token, httponly=True, samesite="Strict")
        return resp

    # -- handlers ----------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("{{LAB}}", self.name), content_type="text/html")

    def _port_info(self, p: Port) -> dict[str, Any]:
        sw = p.switch
        peer = p.link.peer(p) if p.link is not None else None
        vm = next((v.name for h in self.fab.hosts.values() for v in h.vms.values()
                   if any(q is p for q in v.ports)), None) if p.kind in ("vm", "vif") else None
        return {"name": self.fab.short_name(p), "path": p.path, "kind": p.kind,
                "switch": sw.name if sw is not None else None, "vm": vm,
                "peer": self.fab.short_name(peer) if peer is not None else None,
                "link_up": p.link_up}

    async def _ports(self, request: web.Request) -> web.Response:
        return web.json_response([self._port_info(p) for p in self.fab.ports()])

    async def _topology(self, request: web.Request) -> web.Response:
        doc: dict[str, Any] = {"name": self.name,
                               "ports": [self._port_info(p) for p in self.fab.ports()],
                               "switches": sorted(_switch_paths(self.fab))}
        topo = getattr(self.lab, "topo", None)
        if topo is not None:
            import networkx as nx

            from netsim.lab.topology import to_graph

            g = to_graph(topo)
            data = nx.node_link_data(g, edges="links")
            for n in data["nodes"]:
                n.pop("spec", None)
            doc["graph"] = data
        return web.json_response(doc, dumps=lambda o: json.dumps(o, default=str))

    async def _topology_svg(self, request: web.Request) -> web.Response:
        topo = getattr(self.lab, "topo", None)
        if topo is None:
            raise web.HTTPNotFound(text="this lab was not built from a topology file\n")
        if self._svg is None:
            import tempfile
            from pathlib import Path

            from netsim.lab.draw import render

            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "topology.svg"
                await asyncio.to_thread(render, topo, out)
                self._svg = out.read_bytes()
        return web.Response(body=self._svg, content_type="image/svg+xml")

    async def _counters(self, request: web.Request) -> web.Response:
        return web.json_response({"t_ns": self.fab.clock.now_ns(),
                                  "ports": self.fab.counters()})

    async def _mac(self, request: web.Request) -> web.Response:
        name = request.match_info["switch"]
        sw = self._switch(name)
        return web.json_response([{"vlan": e.vlan, "mac": e.mac,
                                   "port": e.port.name, "age_s": round(e.age_s, 3),
                                   "locked": e.locked} for e in sw.mac_entries()])

    def _switch(self, name: str) -> Any:
        from netsim.dataplane.switch import Bridge

        try:
            sw = self.fab[name]
        except KeyError as exc:
            raise web.HTTPNotFound(text=f"no switch {name!r}\n") from exc
        if not isinstance(sw, Bridge):
            raise web.HTTPNotFound(text=f"{name!r} is not a switch\n")
        return sw

    async def _neighbors(self, request: web.Request) -> web.Response:
        from netsim.lab.discovery import neighbour_table

        return web.json_response([r.as_dict() for r in neighbour_table(self.fab)])

    async def _events(self, request: web.Request) -> web.Response:
        after = _int(request.query.get("after", "0"), "after")
        return web.json_response([e for e in self.events if e["seq"] > after])

    async def _json(self, request: web.Request) -> Mapping[str, Any]:
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="send application/json\n")
        try:
            doc = await request.json()
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"body is not JSON: {exc}\n") from exc
        if not isinstance(doc, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object\n")
        return doc

    async def _link(self, request: web.Request) -> web.Response:
        doc = await self._json(request)
        name, up = doc.get("port"), doc.get("up")
        if not isinstance(name, str) or not isinstance(up, bool):
            raise web.HTTPBadRequest(text='want {"port": NAME, "up": true|false}\n')
        port = self._port(name)
        port.set_link(up)
        return web.json_response(self._port_info(port))

    def _port(self, name: str) -> Port:
        try:
            obj = self.fab[name]
        except KeyError as exc:
            raise web.HTTPNotFound(text=f"no port {name!r}\n") from exc
        ports = getattr(obj, "ports", None)
        if not isinstance(obj, Port) and isinstance(ports, list) and ports:
            obj = ports[0]  # a VM: its first NIC
        if not isinstance(obj, Port):
            raise web.HTTPNotFound(text=f"{name!r} is not a port\n")
        return obj

    async def _trace(self, request: web.Request) -> web.Response:
        doc = await self._json(request)
        src, frame = doc.get("from"), doc.get("frame")
        if not isinstance(src, str) or not isinstance(frame, str | dict):
            raise web.HTTPBadRequest(text='want {"from": PORT, "frame": SPEC or HEX}\n')
        t = trace_frame(self.fab, src, frame)
        self.event("trace", f"trace from {src}: {t.verdict}")
        return web.json_response({**t.as_dict(), "text": t.render()})

    async def _capture(self, request: web.Request) -> web.StreamResponse:
        names = [n for n in request.match_info["ports"].split(",") if n]
        ports = []
        for n in names:
            p = self._port(n)
            if all(p is not q for q, _ in ports):
                ports.append((p, self.fab.short_name(p)))
        if not ports:
            raise web.HTTPBadRequest(text="name at least one port\n")
        flt = compile_filter(request.query.get("filter", ""))
        limit = _int(request.query.get("limit", str(DEFAULT_LIMIT)), "limit")
        if not 1 <= limit <= _STREAM_LIMIT_MAX:
            raise web.HTTPBadRequest(text=f"limit must be 1..{_STREAM_LIMIT_MAX}\n")
        duration = request.query.get("duration")
        stop_at = None
        loop = asyncio.get_running_loop()
        if duration is not None:
            try:
                stop_at = loop.time() + float(duration)
            except ValueError as exc:
                raise web.HTTPBadRequest(text="duration must be seconds\n") from exc
        stream = CaptureStream(ports, clock=self.fab.clock, limit=limit,
                               flt=flt if flt.text.strip() else None)
        resp = web.StreamResponse(headers={
            "Content-Type": "application/x-pcapng",
            "Content-Disposition": f'attachment; filename="{self.name}-'
                                   f'{"_".join(n for _, n in ports).replace("/", "_")}.pcapng"',
            "Cache-Control": "no-store"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        label = ",".join(n for _, n in ports)
        self.event("capture", f"capture of {label} started")
        self._streams.add(stream.start())
        closer = None
        if stop_at is not None:
            closer = loop.call_at(stop_at, stream.close)
        try:
            async for chunk in stream.chunks():
                await resp.write(chunk)
        except (ConnectionError, asyncio.CancelledError):
            stream.close()
            raise
        finally:
            stream.close()
            self._streams.discard(stream)
            if closer is not None:
                closer.cancel()
            self.event("capture", f"capture of {label} ended ({stream.total_dropped} "
                                  "frame(s) dropped for a slow reader)")
        await resp.write_eof()
        return resp

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        last: dict[str, dict[str, Any]] = {}
        moving: set[str] = set()  # ports whose last rate sent was not zero
        last_t: float | None = None
        seq = 0

        async def reader() -> None:
            async for msg in ws:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break

        rtask = asyncio.create_task(reader())
        try:
            while not ws.closed and not rtask.done():
                loop_t = asyncio.get_running_loop().time()
                counters = self.fab.counters()
                dt = loop_t - last_t if last_t is not None else 0.0
                changed = {}
                for path, c in counters.items():
                    old = last.get(path)
                    if old == c and path not in moving:
                        continue
                    rx = (c["rx_frames"] - old["rx_frames"]) / dt if old and dt else 0.0
                    tx = (c["tx_frames"] - old["tx_frames"]) / dt if old and dt else 0.0
                    changed[path] = {**c, "rx_fps": round(rx, 1), "tx_fps": round(tx, 1)}
                    if rx or tx:
                        moving.add(path)
                    else:
                        moving.discard(path)
                new_events = [e for e in self.events if e["seq"] > seq]
                if new_events:
                    seq = new_events[-1]["seq"]
                if changed or new_events:
                    await ws.send_json({"t_ns": self.fab.clock.now_ns(), "ports": changed,
                                        "events": new_events, "full": last_t is None})
                last = counters
                last_t = loop_t
                await asyncio.sleep(WS_PERIOD_S)
        except ConnectionError:
            pass
        finally:
            rtask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rtask
            await ws.close()
        return ws


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{what} must be an integer\n") from exc


def _switch_paths(fab: Any) -> list[str]:
    out = [sw.name for sw in fab.switches.values()]
    for h in fab.hosts.values():
        out.extend(f"{h.name}/{s}" for s in h.switches)
    return out
