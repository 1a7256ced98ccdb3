"""Topic layout of one fabric on a shared broker. Every topic lives under `hvsim/<fabric>/`.

A host publishes only under `hvsim/<fabric>/host/<host>/…` (the broker's ACL enforces it, see
`brokerconf`), so the topic a frame batch arrives on proves which host sent it. The management
plane (the "vCenter" user) publishes the distributed switches' configuration and host commands.

    hvsim/<fabric>/vds/<vds>/config             retained, QoS 1: versioned vDS configuration
    hvsim/<fabric>/ctl/<host>                   QoS 1: commands to a host (migrate, …)
    hvsim/<fabric>/host/<host>/presence         retained: online / offline (last will)
    hvsim/<fabric>/host/<host>/status           retained JSON: config versions applied, ports
    hvsim/<fabric>/host/<host>/data/<vds>/to/<dst>    QoS 0: frame batches for one host
    hvsim/<fabric>/host/<host>/data/<vds>/flood/<vid> QoS 0: batches for every host in VLAN <vid>
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from netsim.errors import TransportError

ROOT = "hvsim"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(kind: str, name: str) -> str:
    """A fabric/host/vDS name usable as one topic level (letters, digits, `_.-`); return it."""
    if not _NAME.match(name):
        raise TransportError(
            f"{kind} name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(it becomes a topic level)"
        )
    return name


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names of one fabric."""

    fabric: str

    def __post_init__(self) -> None:
        check_name("fabric", self.fabric)

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.fabric}"

    @property
    def all(self) -> str:
        return f"{self.prefix}/#"

    def vds_config(self, vds: str) -> str:
        return f"{self.prefix}/vds/{vds}/config"

    def control(self, host: str) -> str:
        return f"{self.prefix}/ctl/{host}"

    def host_root(self, host: str) -> str:
        return f"{self.prefix}/host/{host}"

    def presence(self, host: str) -> str:
        return f"{self.prefix}/host/{host}/presence"

    @property
    def all_presence(self) -> str:
        return f"{self.prefix}/host/+/presence"

    def status(self, host: str) -> str:
        return f"{self.prefix}/host/{host}/status"

    @property
    def all_status(self) -> str:
        return f"{self.prefix}/host/+/status"

    def unicast(self, src: str, dst: str, vds: str = "dvs") -> str:
        return f"{self.prefix}/host/{src}/data/{vds}/to/{dst}"

    def unicast_to(self, dst: str, vds: str = "dvs") -> str:
        """Filter: every batch of switch `vds` addressed to `dst`, from any host."""
        return f"{self.prefix}/host/+/data/{vds}/to/{dst}"

    def flood(self, src: str, vid: int, vds: str = "dvs") -> str:
        return f"{self.prefix}/host/{src}/data/{vds}/flood/{vid}"

    def flood_in(self, vid: int, vds: str = "dvs") -> str:
        """Filter: every flood batch of VLAN `vid` on switch `vds`, from any host."""
        return f"{self.prefix}/host/+/data/{vds}/flood/{vid}"

    @property
    def all_vds_configs(self) -> str:
        return f"{self.prefix}/vds/+/config"

    def host_of(self, topic: str) -> str | None:
        """The publishing host named by a `…/host/<host>/…` topic, or None."""
        parts = topic.split("/")
        base = self.prefix.count("/") + 1
        if len(parts) > base + 1 and parts[base] == "host" and topic.startswith(self.prefix + "/"):
            return parts[base + 1]
        return None
