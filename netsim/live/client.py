"""The client side of a served lab, for `hvsim capture` and the extcap adapter: list its ports,
stream a live capture into a file object."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from netsim.errors import CaptureError, TopologyError
from netsim.live.registry import LabEntry, find_lab, running_labs


def _headers(entry: LabEntry) -> dict[str, str]:
    return {"Authorization": f"Bearer {entry.token}"} if entry.token else {}


async def lab_ports(entry: LabEntry) -> list[dict[str, Any]]:
    """The ports of a running lab (`GET /api/ports`)."""
    try:
        async with aiohttp.ClientSession(headers=_headers(entry)) as s, \
                s.get(f"{entry.url}/api/ports", timeout=aiohttp.ClientTimeout(total=5)) as r:
            if r.status != 200:
                raise TopologyError(f"lab {entry.name} at {entry.url}: {r.status} "
                                    f"{(await r.text()).strip()}")
            return list(await r.json())
    except aiohttp.ClientError as exc:
        raise TopologyError(f"lab {entry.name} at {entry.url} does not answer: {exc}") from exc


def resolve(ports: str, lab: str | None) -> tuple[LabEntry, list[str]]:
    """Which lab and ports `PORT[,PORT]` means: `--lab NAME`, or `LAB/PORT` when LAB is the
    name of a running lab, or the only running lab."""
    names = [p.strip() for p in ports.split(",") if p.strip()]
    if not names:
        raise CaptureError("capture: name at least one port")
    if lab is None:
        running = {e.name for e in running_labs()}
        first = names[0].split("/", 1)
        if len(first) == 2 and first[0] in running:
            lab = first[0]
    entry = find_lab(lab)
    prefix = entry.name + "/"
    return entry, [n[len(prefix):] if n.startswith(prefix) else n for n in names]


async def stream_capture(
    entry: LabEntry,
    ports: list[str],
    write: Callable[[bytes], None],
    *,
    flt: str = "",
    duration_s: float | None = None,
    limit: int | None = None,
) -> int:
    """Copy the live pcapng of `ports` into `write` until the lab ends it (duration) or the
    connection drops; returns the bytes written."""
    params: dict[str, str] = {}
    if flt:
        params["filter"] = flt
    if duration_s is not None:
        params["duration"] = str(duration_s)
    if limit is not None:
        params["limit"] = str(limit)
    url = f"{entry.url}/api/capture/{quote(','.join(ports), safe='/,')}.pcapng"
    n = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    try:
        async with aiohttp.ClientSession(headers=_headers(entry), timeout=timeout) as s, \
                s.get(url, params=params) as r:
            if r.status != 200:
                body = (await r.text()).strip()
                raise CaptureError(f"capture of {','.join(ports)} from lab {entry.name}: "
                                   f"{_error_text(body) or r.reason}")
            async for chunk in r.content.iter_any():
                write(chunk)
                n += len(chunk)
    except aiohttp.ClientPayloadError:
        pass  # the lab stopped mid-stream: what arrived is a valid prefix of blocks
    except aiohttp.ClientError as exc:
        raise CaptureError(f"lab {entry.name} at {entry.url}: {exc}") from exc
    return n


def _error_text(body: str) -> str:
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        return body
    return str(doc.get("error", body)) if isinstance(doc, dict) else body
