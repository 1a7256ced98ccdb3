"""NBD wire format: constants and pure packers/parsers (no sockets, no disks).

Values from the NBD project's `doc/proto.md` (fixed newstyle negotiation, the INFO extension,
structured replies, metadata contexts). Everything is big-endian.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from storage.errors import StorageError

# --- handshake -------------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x3E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0           # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0         # client flags
FLAG_C_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_PLATFORM = (1 << 31) + 4
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- transmission ----------------------------------------------------------------------------
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_ROTATIONAL = 1 << 4
TFLAG_SEND_TRIM = 1 << 5
TFLAG_SEND_WRITE_ZEROES = 1 << 6
TFLAG_SEND_DF = 1 << 7
TFLAG_CAN_MULTI_CONN = 1 << 8

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

STATE_HOLE = 1 << 0                    # base:allocation flags
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"

# errno values the protocol names (Linux numbering, as proto.md requires)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

OPTION_NAMES = {OPT_EXPORT_NAME: "EXPORT_NAME", OPT_ABORT: "ABORT", OPT_LIST: "LIST",
                OPT_STARTTLS: "STARTTLS", OPT_INFO: "INFO", OPT_GO: "GO",
                OPT_STRUCTURED_REPLY: "STRUCTURED_REPLY",
                OPT_LIST_META_CONTEXT: "LIST_META_CONTEXT",
                OPT_SET_META_CONTEXT: "SET_META_CONTEXT",
                OPT_EXTENDED_HEADERS: "EXTENDED_HEADERS"}
COMMAND_NAMES = {CMD_READ: "READ", CMD_WRITE: "WRITE", CMD_DISC: "DISC", CMD_FLUSH: "FLUSH",
                 CMD_TRIM: "TRIM", CMD_CACHE: "CACHE", CMD_WRITE_ZEROES: "WRITE_ZEROES",
                 CMD_BLOCK_STATUS: "BLOCK_STATUS"}

_GREETING = struct.Struct(">QQH")
OPTION_HEADER = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")
_U64 = struct.Struct(">Q")


class NbdProtocolError(StorageError):
    """The peer broke a MUST of the protocol; the connection is closed."""


def greeting(flags: int = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) -> bytes:
    """The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags."""
    return _GREETING.pack(NBDMAGIC, IHAVEOPT, flags)


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    """One fixed-newstyle option reply."""
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def export_name_reply(size: int, tflags: int, *, no_zeroes: bool) -> bytes:
    """The answer to NBD_OPT_EXPORT_NAME: size, transmission flags, 124 zeros unless NO_ZEROES."""
    return struct.pack(">QH", size, tflags) + (b"" if no_zeroes else bytes(124))


def info_export(size: int, tflags: int) -> bytes:
    """NBD_INFO_EXPORT payload of an NBD_REP_INFO."""
    return struct.pack(">HQH", INFO_EXPORT, size, tflags)


def info_name(name: str) -> bytes:
    """NBD_INFO_NAME payload."""
    return struct.pack(">H", INFO_NAME) + name.encode()


def info_description(text: str) -> bytes:
    """NBD_INFO_DESCRIPTION payload."""
    return struct.pack(">H", INFO_DESCRIPTION) + text.encode()[:4096]


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    """NBD_INFO_BLOCK_SIZE payload."""
    return struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum)


def rep_server(name: str, description: str = "") -> bytes:
    """NBD_REP_SERVER payload of an NBD_OPT_LIST reply."""
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + description.encode()[:4096]


def rep_meta_context(context_id: int, name: str) -> bytes:
    """NBD_REP_META_CONTEXT payload."""
    return struct.pack(">I", context_id) + name.encode()


@dataclass(frozen=True)
class InfoRequest:
    """The payload of NBD_OPT_INFO / NBD_OPT_GO."""

    name: str
    requests: tuple[int, ...]


@dataclass(frozen=True)
class MetaRequest:
    """The payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT."""

    name: str
    queries: tuple[str, ...]


def _string(data: bytes, what: str) -> str:
    if len(data) > 4096:
        raise NbdProtocolError(f"{what}: {len(data)} bytes, the limit is 4096")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise NbdProtocolError(f"{what}: not UTF-8") from exc
    if "\0" in text:
        raise NbdProtocolError(f"{what}: contains NUL")
    return text


def parse_info_request(data: bytes) -> InfoRequest:
    """Parse `u32 namelen, name, u16 n, n × u16`; raises NbdProtocolError if lengths disagree."""
    if len(data) < 6:
        raise NbdProtocolError(f"INFO/GO data of {len(data)} bytes is too short")
    (nlen,) = struct.unpack_from(">I", data)
    if 4 + nlen + 2 > len(data):
        raise NbdProtocolError(f"INFO/GO export name length {nlen} overruns the option")
    name = _string(data[4:4 + nlen], "export name")
    (count,) = struct.unpack_from(">H", data, 4 + nlen)
    rest = data[6 + nlen:]
    if len(rest) != 2 * count:
        raise NbdProtocolError(f"INFO/GO says {count} information requests but carries "
                               f"{len(rest)} bytes")
    return InfoRequest(name, struct.unpack(f">{count}H", rest))


def parse_meta_request(data: bytes) -> MetaRequest:
    """Parse `u32 namelen, name, u32 n, n × (u32 len, query)`."""
    if len(data) < 8:
        raise NbdProtocolError(f"META_CONTEXT data of {len(data)} bytes is too short")
    (nlen,) = struct.unpack_from(">I", data)
    if 4 + nlen + 4 > len(data):
        raise NbdProtocolError(f"META_CONTEXT export name length {nlen} overruns the option")
    name = _string(data[4:4 + nlen], "export name")
    (count,) = struct.unpack_from(">I", data, 4 + nlen)
    pos = 8 + nlen
    queries: list[str] = []
    for i in range(count):
        if pos + 4 > len(data):
            raise NbdProtocolError(f"META_CONTEXT query {i} of {count} missing")
        (qlen,) = struct.unpack_from(">I", data, pos)
        if pos + 4 + qlen > len(data):
            raise NbdProtocolError(f"META_CONTEXT query {i} length {qlen} overruns the option")
        queries.append(_string(data[pos + 4:pos + 4 + qlen], f"query {i}"))
        pos += 4 + qlen
    if pos != len(data):
        raise NbdProtocolError(f"META_CONTEXT has {len(data) - pos} bytes after its queries")
    return MetaRequest(name, tuple(queries))


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """A simple reply header (READ data, when any, follows it)."""
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk(cookie: int, ctype: int, payload_len: int, *, done: bool) -> bytes:
    """A structured reply chunk header for a payload of `payload_len` bytes."""
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0, ctype, cookie,
                       payload_len)


def data_chunk_header(cookie: int, offset: int, length: int, *, done: bool) -> bytes:
    """Header of an OFFSET_DATA chunk carrying `length` bytes read at `offset`."""
    return chunk(cookie, REPLY_TYPE_OFFSET_DATA, 8 + length, done=done) + _U64.pack(offset)


def hole_chunk(cookie: int, offset: int, length: int, *, done: bool) -> bytes:
    """An OFFSET_HOLE chunk: `length` bytes of zeros at `offset`."""
    return chunk(cookie, REPLY_TYPE_OFFSET_HOLE, 12, done=done) + struct.pack(">QI", offset,
                                                                               length)


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    """A final ERROR chunk with a human-readable message."""
    msg = message.encode()[:4096]
    payload = struct.pack(">IH", error, len(msg)) + msg
    return chunk(cookie, REPLY_TYPE_ERROR, len(payload), done=True) + payload


def none_chunk(cookie: int) -> bytes:
    """A final NONE chunk (success, nothing more to say)."""
    return chunk(cookie, REPLY_TYPE_NONE, 0, done=True)


def block_status_chunk(cookie: int, context_id: int,
                       extents: list[tuple[int, int]], *, done: bool = True) -> bytes:
    """A BLOCK_STATUS chunk: (length, flags) descriptors for one metadata context."""
    payload = struct.pack(">I", context_id) + b"".join(
        struct.pack(">II", ln, fl) for ln, fl in extents)
    return chunk(cookie, REPLY_TYPE_BLOCK_STATUS, len(payload), done=done) + payload
