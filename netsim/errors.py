"""Typed errors of the network half. Each names what was wrong and where (file, port, field)."""


class NetsimError(Exception):
    """A user-facing error of the network half; the CLI prints it without a traceback."""


class FrameError(NetsimError):
    """A frame that cannot be parsed or built (runt, cut tag, bad field)."""


class ConfigError(NetsimError):
    """A configuration value out of range or inconsistent (VLAN 4096, unknown port group)."""


class TopologyError(NetsimError):
    """A topology file or builder call that is wrong; the message names file, line and key."""


class ScenarioError(NetsimError):
    """A scenario file that is wrong; the message names file, line and key."""


class CaptureError(NetsimError):
    """A pcap/pcapng file that is truncated or not a capture at all."""


class TransportError(NetsimError):
    """The bus (in-process or MQTT broker) refused, lost, or mangled something."""
