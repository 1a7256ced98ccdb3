"""YAML documents that remember where each value came from, for errors users can act on.

`load_yaml(text, source)` returns plain Python data (dicts, lists, scalars) and a `SourceMap`
that answers "which line holds key path vms.vm1.vifs[0].network?". Loaders of topology and
scenario files raise errors of the form `topology.yaml:14: vms.vm1.vifs[0].network: no network
'vlan6' on host xen1` with `SourceMap.error(...)`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from netsim.errors import NetsimError

PathPart = str | int


def format_path(path: Sequence[PathPart]) -> str:
    """`("vms", "vm1", "vifs", 0, "network")` -> `vms.vm1.vifs[0].network`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<document>"


@dataclass
class SourceMap:
    """Line numbers (1-based) of every key and item of a loaded YAML document."""

    source: str
    lines: dict[tuple[PathPart, ...], int] = field(default_factory=dict)

    def line(self, path: Sequence[PathPart]) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)

    def where(self, path: Sequence[PathPart]) -> str:
        """`file.yaml:14: vms.vm1.vifs[0].network`."""
        line = self.line(path)
        loc = f"{self.source}:{line}" if line is not None else self.source
        return f"{loc}: {format_path(path)}"

    def error(self, path: Sequence[PathPart], message: str,
              cls: type[NetsimError] = NetsimError) -> NetsimError:
        """An error of type `cls` naming file, line and key path; the caller raises it."""
        return cls(f"{self.where(path)}: {message}")


_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _to_python(node: yaml.Node, path: tuple[PathPart, ...], smap: SourceMap) -> Any:
    smap.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise NetsimError(f"{smap.source}:{node.start_mark.line + 1}: {format_path(path)}: "
                          f"tag {node.tag!r} is not allowed (plain YAML only)")
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise smap.error(path, "a mapping key must be a plain value")
            key = _scalar(key_node)
            if key in out:
                raise NetsimError(
                    f"{smap.source}:{key_node.start_mark.line + 1}: "
                    f"{format_path((*path, key))}: duplicate key")
            child = (*path, key)
            smap.lines[child] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, child, smap)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), smap) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    return yaml.SafeLoader.construct_object(_LOADER, node, deep=True)  # type: ignore[arg-type]


class _ScalarLoader(yaml.SafeLoader):
    def __init__(self) -> None:
        super().__init__("")


_LOADER = _ScalarLoader()

#: How many values aliases may add to a document beyond those written in it: at least this
#: many, and up to ALIAS_RATIO times the written ones. Expanding is what costs (a 345-byte
#: "billion laughs" file expands to 10^9 values), so an alias bomb is refused before it.
ALIAS_FLOOR = 100_000
ALIAS_RATIO = 10


def _check_aliases(root: yaml.Node, source: str, cls: type[NetsimError]) -> None:
    """Refuse a document whose aliases would expand it beyond the bound (or into a loop)."""
    sizes: dict[int, int] = {}
    uses: dict[int, int] = {}
    nodes: dict[int, yaml.Node] = {}
    busy: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            uses[key] = uses.get(key, 1) + 1
            return sizes[key]
        if key in busy:
            raise cls(f"{source}:{node.start_mark.line + 1}: an alias refers to the "
                      "collection that contains it (a loop): not allowed")
        busy.add(key)
        n = 1
        if isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n += sum(size(item) for item in node.value)
        busy.discard(key)
        sizes[key] = n
        nodes[key] = node
        return n

    total = size(root)
    written = len(sizes)
    if total - written > max(ALIAS_FLOOR, ALIAS_RATIO * written):
        worst = max(uses, key=lambda k: sizes[k] * uses[k])
        raise cls(f"{source}:{nodes[worst].start_mark.line + 1}: aliases expand this "
                  f"document from {written:,} written values to {total:,} (the limit adds "
                  f"{max(ALIAS_FLOOR, ALIAS_RATIO * written):,}): refusing an alias bomb; the "
                  f"anchor here is used {uses[worst]:,} times")


#: libyaml's composer (PyYAML's `CSafeLoader`): the same nodes with the same marks (line
#: numbers) as the pure-Python one, about six times faster on a large topology.
_C_LOADER: Any = getattr(yaml, "CSafeLoader", None)
_FALLBACK = object()


def _compose_fast(text: str) -> Any:
    """The document's node tree by libyaml when it is present and the text is one it accepts
    as the pure-Python loader would; `_FALLBACK` otherwise, so the pure-Python loader composes
    it and every error keeps its exact wording (the two word their errors differently)."""
    if _C_LOADER is None or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return _FALLBACK
    try:
        return yaml.compose(text, Loader=_C_LOADER)
    except (yaml.YAMLError, RecursionError, ValueError):
        return _FALLBACK


def load_yaml(
    text: str, source: str, cls: type[NetsimError] = NetsimError
) -> tuple[Any, SourceMap]:
    """Parse one YAML document safely; return its data and its source map.

    Syntax errors and duplicate keys raise `cls` naming the file and line. Only plain YAML types
    are built (no Python object tags): loading never runs code from the file.
    """
    smap = SourceMap(source)
    node = _compose_fast(text)
    try:
        if node is _FALLBACK:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise cls(f"{source}{line}: not valid YAML: {exc.problem}") from exc
    except yaml.reader.ReaderError as exc:
        # A character YAML does not allow (control characters, a stray BOM): its str() spans
        # two lines naming "<unicode string>"; say where it is in the user's file instead.
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 0
        where = f":{line}" if line else ""
        raise cls(f"{source}{where}: not valid YAML: {exc.reason} "
                  f"(character {exc.character!r})") from exc
    except yaml.YAMLError as exc:
        msg = " ".join(str(exc).split())
        raise cls(f"{source}: not valid YAML: {msg}") from exc
    except RecursionError:  # PyYAML composes nested collections recursively
        raise cls(f"{source}: not valid YAML: collections nested too deeply") from None
    if node is None:
        return None, smap
    try:
        _check_aliases(node, source, cls)
        return _to_python(node, (), smap), smap
    except RecursionError:
        raise cls(f"{source}: not valid YAML: collections nested too deeply") from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise cls(f"{source}{line}: {exc.problem}") from exc
    except NetsimError as exc:
        if isinstance(exc, cls):
            raise
        raise cls(str(exc)) from exc
