"""The NBD server against hand-written (and hostile) clients: protocol replies byte by byte,
bounds on every request, and a disk that nothing outside its range can touch."""
from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator

import pytest

from storage.devices.memdisk import MemoryDisk
from storage.devices.rawio import MemoryIO
from storage.nbd import proto as p
from storage.nbd.server import MAX_REQUEST, Export, NbdServer
from storage.vhd.image import VhdImage

MiB = 2**20


class Client:
    """A minimal NBD client that lets a test send anything."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    @classmethod
    async def connect(cls, port: int) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def hello(self, cflags: int = 3) -> int:
        magic, opt, hflags = struct.unpack(">QQH", await self.r.readexactly(18))
        assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
        self.w.write(struct.pack(">I", cflags))
        return hflags

    async def option(self, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        self.w.write(struct.pack(">QII", p.IHAVEOPT, opt, len(data)) + data)
        replies = []
        while True:
            magic, ropt, rtype, ln = struct.unpack(">QIII", await self.r.readexactly(20))
            assert magic == p.OPTION_REPLY_MAGIC and ropt == opt
            replies.append((rtype, await self.r.readexactly(ln)))
            if rtype not in (p.REP_SERVER, p.REP_INFO, p.REP_META_CONTEXT):
                return replies

    async def go(self, name: str = "", *, structured: bool = True, meta: bool = True) -> int:
        await self.hello()
        if structured:
            assert (await self.option(p.OPT_STRUCTURED_REPLY))[-1][0] == p.REP_ACK
        if meta:
            q = p.BASE_ALLOCATION.encode()
            data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">II", 1, len(q)) + q
            assert (await self.option(p.OPT_SET_META_CONTEXT, data))[-1][0] == p.REP_ACK
        reps = await self.option(p.OPT_GO, struct.pack(">I", len(name)) + name.encode()
                                 + struct.pack(">H", 0))
        assert reps[-1][0] == p.REP_ACK, reps
        _t, size, _flags = struct.unpack(">HQH", reps[0][1])
        return size

    def request(self, cmd: int, offset: int, length: int, data: bytes = b"", *,
                flags: int = 0, cookie: int = 7) -> None:
        self.w.write(struct.pack(">IHHQQI", p.REQUEST_MAGIC, flags, cmd, cookie, offset, length)
                     + data)

    async def structured(self) -> list[tuple[int, int, bytes]]:
        """Chunks (flags, type, payload) of one structured reply, or one simple reply as
        (-1, error, b'')."""
        out = []
        while True:
            (magic,) = struct.unpack(">I", await self.r.readexactly(4))
            if magic == p.SIMPLE_REPLY_MAGIC:
                err, _cookie = struct.unpack(">IQ", await self.r.readexactly(12))
                return [(-1, err, b"")]
            assert magic == p.STRUCTURED_REPLY_MAGIC
            flags, ctype, _cookie, ln = struct.unpack(">HHQI", await self.r.readexactly(16))
            out.append((flags, ctype, await self.r.readexactly(ln)))
            if flags & p.REPLY_FLAG_DONE:
                return out

    async def closed(self) -> bool:
        """True when the server closes the connection (whatever it sent before) within 5 s."""
        async def drain() -> None:
            while await self.r.read(1 << 20):
                pass

        try:
            await asyncio.wait_for(drain(), 5)
        except ConnectionError:
            pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.w.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[NbdServer, int, MemoryDisk]]:
    disk = MemoryDisk(4 * MiB, name="mem")
    disk.io.pwrite(0, random.Random(1).randbytes(4 * MiB))
    async with NbdServer([Export("d", disk)]) as srv:
        _h, port = await srv.listen_tcp("127.0.0.1", 0)
        yield srv, port, disk


def error_of(chunks: list[tuple[int, int, bytes]]) -> int:
    flags, ctype, payload = chunks[-1]
    if flags == -1:
        return ctype
    assert ctype == p.REPLY_TYPE_ERROR
    return struct.unpack(">I", payload[:4])[0]


async def test_read_write_and_structured_replies(server) -> None:
    srv, port, disk = server
    c = await Client.connect(port)
    assert await c.go("d") == 4 * MiB
    c.request(p.CMD_WRITE, 1000, 5, b"hello")
    assert (await c.structured())[0][:2] == (-1, 0)
    c.request(p.CMD_READ, 998, 9)
    [(flags, ctype, payload)] = await c.structured()
    assert flags == p.REPLY_FLAG_DONE and ctype == p.REPLY_TYPE_OFFSET_DATA
    assert payload[:8] == struct.pack(">Q", 998) and payload[10:15] == b"hello"
    assert disk.read(1000, 5) == b"hello"
    c.request(p.CMD_FLUSH, 0, 0)
    assert (await c.structured())[0][:2] == (-1, 0)
    assert disk.flushes == 1
    c.request(p.CMD_DISC, 0, 0)
    assert await c.closed()
    assert srv.stats.commands["WRITE"] == 1 and srv.stats.bytes_written == 5


async def test_option_haggling_list_info_abort_and_unknown(server) -> None:
    _srv, port, _disk = server
    c = await Client.connect(port)
    assert await c.hello() == p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
    [(t, data), (ack, _)] = await c.option(p.OPT_LIST)
    assert t == p.REP_SERVER and data == struct.pack(">I", 1) + b"d" and ack == p.REP_ACK
    reps = await c.option(p.OPT_INFO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
    assert reps[-1][0] == p.REP_ERR_UNKNOWN
    reps = await c.option(p.OPT_INFO, struct.pack(">I", 1) + b"d" + struct.pack(">HH", 1,
                                                                                 p.INFO_NAME))
    kinds = [struct.unpack(">H", d[:2])[0] for t, d in reps if t == p.REP_INFO]
    assert kinds == [p.INFO_EXPORT, p.INFO_NAME, p.INFO_BLOCK_SIZE]
    _t, _mn, _pref, mx = struct.unpack(">HIII", reps[2][1])
    assert mx == MAX_REQUEST
    # meta context before structured replies: invalid; TLS: refused by policy; 99: unsupported
    q = b"base:allocation"
    meta = struct.pack(">I", 1) + b"d" + struct.pack(">II", 1, len(q)) + q
    assert (await c.option(p.OPT_SET_META_CONTEXT, meta))[-1][0] == p.REP_ERR_INVALID
    assert (await c.option(p.OPT_STARTTLS))[-1][0] == p.REP_ERR_POLICY
    assert (await c.option(99, b"xyz"))[-1][0] == p.REP_ERR_UNSUP
    # a lying length inside INFO is an error reply, not a crash
    bad = struct.pack(">I", 1000) + b"d" + struct.pack(">H", 0)
    assert (await c.option(p.OPT_GO, bad))[-1][0] == p.REP_ERR_INVALID
    assert (await c.option(p.OPT_ABORT)) == [(p.REP_ACK, b"")]
    assert await c.closed()


async def test_export_name_old_way_and_unknown_export_hangs_up(server) -> None:
    _srv, port, _disk = server
    c = await Client.connect(port)
    await c.hello(cflags=1)                       # without NO_ZEROES: 124 zero bytes follow
    c.w.write(struct.pack(">QII", p.IHAVEOPT, p.OPT_EXPORT_NAME, 1) + b"d")
    size, flags = struct.unpack(">QH", await c.r.readexactly(10))
    assert size == 4 * MiB and flags & p.TFLAG_HAS_FLAGS and not flags & p.TFLAG_READ_ONLY
    assert await c.r.readexactly(124) == bytes(124)
    c.close()
    c = await Client.connect(port)
    await c.hello()
    c.w.write(struct.pack(">QII", p.IHAVEOPT, p.OPT_EXPORT_NAME, 3) + b"zzz")
    assert await c.closed()


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n" * 4, bytes(range(256)) * 8])
async def test_garbage_handshake_closes_only_that_connection(server, garbage: bytes) -> None:
    srv, port, disk = server
    before = disk.read(0, 4 * MiB)
    c = await Client.connect(port)
    await c.r.readexactly(18)
    c.w.write(garbage)
    assert await c.closed()
    good = await Client.connect(port)
    assert await good.go() == 4 * MiB
    good.close()
    assert disk.read(0, 4 * MiB) == before
    assert sum(srv.stats.disconnects.values()) >= 1


async def test_huge_option_and_flood_of_options_hang_up(server) -> None:
    _srv, port, _disk = server
    c = await Client.connect(port)
    await c.hello()
    c.w.write(struct.pack(">QII", p.IHAVEOPT, p.OPT_INFO, 2**31))
    assert await c.closed()
    c = await Client.connect(port)
    await c.hello()
    c.w.write(struct.pack(">QII", p.IHAVEOPT, 99, 0) * 1000)
    assert await c.closed()                       # bounded work per connection


async def test_two_gib_requests(server) -> None:
    srv, port, disk = server
    before = disk.read(0, 4 * MiB)
    c = await Client.connect(port)
    await c.go()
    c.request(p.CMD_READ, 0, 2**31)
    assert error_of(await c.structured()) == p.EINVAL
    c.request(p.CMD_READ, 0, 2**31, flags=p.CMD_FLAG_DF)
    assert error_of(await c.structured()) == p.EOVERFLOW
    c.request(p.CMD_READ, 0, 16)                  # the connection is still good
    assert (await c.structured())[0][1] == p.REPLY_TYPE_OFFSET_DATA
    c.request(p.CMD_WRITE, 0, 2**31, b"\xff" * 65536)
    assert await c.closed()                       # a payload that big is not read
    assert disk.read(0, 4 * MiB) == before
    assert "WRITE of 2147483648 bytes (limit 33554432)" in srv.stats.disconnects, \
        srv.stats.disconnects


async def test_nothing_outside_the_disk(server) -> None:
    _srv, port, disk = server
    before = disk.read(0, 4 * MiB)
    c = await Client.connect(port)
    await c.go()
    c.request(p.CMD_READ, 4 * MiB - 10, 11)
    assert error_of(await c.structured()) == p.EINVAL
    c.request(p.CMD_READ, 2**64 - 512, 1024)      # offset+length wraps in 64 bits
    assert error_of(await c.structured()) == p.EINVAL
    c.request(p.CMD_WRITE, 4 * MiB - 2, 4, b"abcd")
    assert error_of(await c.structured()) == p.ENOSPC
    c.request(p.CMD_WRITE_ZEROES, 4 * MiB, 1)
    assert error_of(await c.structured()) == p.ENOSPC
    c.request(p.CMD_TRIM, 2 * MiB, 4 * MiB)
    assert error_of(await c.structured()) == p.EINVAL
    c.request(p.CMD_BLOCK_STATUS, 4 * MiB, 1)
    assert error_of(await c.structured()) == p.EINVAL
    c.request(42, 0, 0)
    assert error_of(await c.structured()) == p.EINVAL
    assert disk.read(0, 4 * MiB) == before and disk.io.size() == 4 * MiB


async def test_disconnect_mid_write_writes_nothing(server) -> None:
    srv, port, disk = server
    before = disk.read(0, 4 * MiB)
    c = await Client.connect(port)
    await c.go()
    c.request(p.CMD_WRITE, 0, MiB, b"\x99" * (MiB // 2))
    await c.w.drain()
    c.close()
    deadline = asyncio.get_running_loop().time() + 15  # generous: only bounds a hang
    while srv.stats.active and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - a counter
        await asyncio.sleep(0.01)
    assert srv.stats.active == 0
    assert disk.read(0, 4 * MiB) == before
    again = await Client.connect(port)
    await again.go()
    again.request(p.CMD_READ, 0, 8)
    assert (await again.structured())[0][2][8:] == before[:8]


async def test_read_only_export_refuses_every_write_kind() -> None:
    disk = MemoryDisk(MiB, name="ro")
    async with NbdServer([Export("ro", disk, read_only=True)]) as srv:
        _h, port = await srv.listen_tcp("127.0.0.1", 0)
        c = await Client.connect(port)
        await c.go()
        for cmd, data in ((p.CMD_WRITE, b"x" * 8), (p.CMD_WRITE_ZEROES, b""),
                          (p.CMD_TRIM, b"")):
            c.request(cmd, 0, 8, data)
            assert error_of(await c.structured()) == p.EPERM
    assert disk.read(0, MiB) == bytes(MiB) and disk.discards == 0


async def test_block_status_and_holes_in_reads_of_a_sparse_vhd() -> None:
    img = VhdImage.create(MemoryIO(name="sparse"), size=16 * MiB, block_size=2 * MiB)
    img.write(4 * MiB + 512, b"\x11" * 1024)      # block 2, two sectors set
    async with NbdServer([Export("v", img)]) as srv:
        _h, port = await srv.listen_tcp("127.0.0.1", 0)
        c = await Client.connect(port)
        await c.go()
        c.request(p.CMD_BLOCK_STATUS, 0, 8 * MiB)
        [(_fl, ctype, payload)] = await c.structured()
        assert ctype == p.REPLY_TYPE_BLOCK_STATUS
        ctx, *rest = struct.unpack(f">I{(len(payload) - 4) // 4}I", payload)
        assert ctx == 1
        pairs = list(zip(rest[::2], rest[1::2], strict=True))
        hole = p.STATE_HOLE | p.STATE_ZERO
        # a dynamic VHD allocates whole blocks (as qemu does): block 2 is data, the rest holes
        assert pairs == [(4 * MiB, hole), (2 * MiB, 0), (2 * MiB, hole)]
        c.request(p.CMD_BLOCK_STATUS, 0, 8 * MiB, flags=p.CMD_FLAG_REQ_ONE)
        [(_f, _t, payload)] = await c.structured()
        assert len(payload) == 12
        # a read across the start of the block: a hole chunk, then the data
        c.request(p.CMD_READ, 4 * MiB - 2048, 4096)
        chunks = await c.structured()
        assert [t for _f, t, _p in chunks] == [p.REPLY_TYPE_OFFSET_HOLE,
                                               p.REPLY_TYPE_OFFSET_DATA]
        assert chunks[0][2] == struct.pack(">QI", 4 * MiB - 2048, 2048)
        assert chunks[1][2] == struct.pack(">Q", 4 * MiB) + bytes(512) + b"\x11" * 1024 + bytes(512)
        assert [f for f, _t, _p in chunks] == [0, p.REPLY_FLAG_DONE]
        # DF: one data chunk, zeros included
        c.request(p.CMD_READ, 4 * MiB - 2048, 4096, flags=p.CMD_FLAG_DF)
        [(_f, t, payload)] = await c.structured()
        assert t == p.REPLY_TYPE_OFFSET_DATA and len(payload) == 8 + 4096
        # WRITE_ZEROES over holes leaves them holes; with NO_HOLE it allocates
        c.request(p.CMD_WRITE_ZEROES, 8 * MiB, 2 * MiB)
        assert (await c.structured())[0][1] == 0
        assert img.allocated_blocks == 1
        c.request(p.CMD_WRITE_ZEROES, 4 * MiB, 4096, flags=p.CMD_FLAG_NO_HOLE)
        assert (await c.structured())[0][1] == 0
        assert img.read(4 * MiB, 4096) == bytes(4096) and img.allocated_blocks == 1
        assert srv.stats.errors == {}


async def test_block_status_needs_a_context() -> None:
    async with NbdServer([Export("m", MemoryDisk(MiB))]) as srv:
        _h, port = await srv.listen_tcp("127.0.0.1", 0)
        c = await Client.connect(port)
        await c.go(meta=False)
        c.request(p.CMD_BLOCK_STATUS, 0, 4096)
        assert error_of(await c.structured()) == p.EINVAL


async def test_simple_replies_without_structured_negotiation(server) -> None:
    _srv, port, disk = server
    c = await Client.connect(port)
    await c.go(structured=False, meta=False)
    c.request(p.CMD_READ, 10, 6)
    magic, err, _cookie = struct.unpack(">IIQ", await c.r.readexactly(16))
    assert (magic, err) == (p.SIMPLE_REPLY_MAGIC, 0)
    assert await c.r.readexactly(6) == disk.read(10, 6)
    c.request(p.CMD_READ, 4 * MiB, 1)
    magic, err, _cookie = struct.unpack(">IIQ", await c.r.readexactly(16))
    assert err == p.EINVAL


async def test_random_bytes_after_negotiation_never_crash_the_server(server) -> None:
    _srv, port, disk = server
    before = disk.read(0, 4 * MiB)
    rng = random.Random(1234)
    for _ in range(20):
        c = await Client.connect(port)
        await c.go()
        c.w.write(rng.randbytes(rng.randrange(1, 4096)))
        await c.w.drain()
        c.close()
    good = await Client.connect(port)
    await good.go()
    good.request(p.CMD_READ, 0, 4 * MiB)
    assert (await good.structured())[0][2][8:] == before
    assert disk.read(0, 4 * MiB) == before


async def test_silent_clients_time_out_and_clients_are_capped() -> None:
    disk = MemoryDisk(MiB)
    async with NbdServer([Export("m", disk)], max_clients=2,
                         negotiation_timeout=1.5) as srv:
        _h, port = await srv.listen_tcp("127.0.0.1", 0)
        silent = await Client.connect(port)
        await silent.r.readexactly(18)            # greeting, then the client says nothing
        working = await Client.connect(port)
        await working.go()
        third = await Client.connect(port)
        assert await third.closed()               # over the cap: closed at once
        assert await silent.closed()              # gave up after the negotiation timeout
        assert "no export chosen within 1.5 s" in srv.stats.disconnects
        assert "more than 2 clients" in srv.stats.disconnects
        await asyncio.sleep(2.0)                  # past the timeout: negotiation is over
        working.request(p.CMD_READ, 0, 4)
        assert (await working.structured())[0][1] == p.REPLY_TYPE_OFFSET_DATA
