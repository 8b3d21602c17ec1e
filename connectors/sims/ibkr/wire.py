"""The TWS API framing: every message is a 4-byte big-endian length and then text
fields, each ended by a NUL. The connection opens with ``API\\0`` and one framed
version range from the client, answered by one message of two fields (the server
version and the connection time)."""

from __future__ import annotations

import asyncio
import struct
import time

SERVER_VERSION = 178
MIN_CLIENT_VERSION = 157


def encode(*fields: object) -> bytes:
    body = "".join(f"{_text(f)}\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # the client parses some quantities as int
    return "" if value is None else str(value)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(size)


async def read_message(reader: asyncio.StreamReader) -> list[str]:
    """One client request as its fields (the trailing empty field dropped)."""
    fields = (await read_frame(reader)).decode(errors="replace").split("\0")
    return fields[:-1] if fields and fields[-1] == "" else fields


async def handshake(reader: asyncio.StreamReader) -> int:
    """Read ``API\\0`` and the client's version range; the highest version both speak."""
    prefix = await reader.readexactly(4)
    if prefix != b"API\0":
        raise ConnectionError("not a TWS API client")
    versions = (await read_frame(reader)).decode(errors="replace").split(" ")[0].lstrip("v")
    low, _, high = versions.partition("..")
    top = int(high or low)
    if top < MIN_CLIENT_VERSION:
        raise ConnectionError("client version too old")
    return min(top, SERVER_VERSION)


def handshake_reply(version: int) -> bytes:
    return encode(version, tws_time())


def tws_time(at: float | None = None) -> str:
    return time.strftime("%Y%m%d %H:%M:%S UTC", time.gmtime(time.time() if at is None else at))
