"""A minimal WebSocket client over a plain socket (tests only): the handshake with any
Origin and cookie, masked binary frames out, frames in, the close code and reason."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from dataclasses import dataclass


@dataclass
class WsClient:
    status: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes, opcode: int = 0x2) -> None:
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            size = bytes((0x80 | n,))
        elif n < 1 << 16:
            size = bytes((0x80 | 126,)) + struct.pack(">H", n)
        else:
            size = bytes((0x80 | 127,)) + struct.pack(">Q", n)
        head = bytes((0x80 | opcode,)) + size
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.writer.write(head + mask + body)
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        """The next data or close frame: (opcode, payload); pings are answered with a
        pong, as a browser does, and skipped."""
        while True:
            op, payload = await self._frame()
            if op == 0x9:
                await self.send(payload, 0xA)
            elif op != 0xA:
                return op, payload

    async def _frame(self) -> tuple[int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def until_close(self, timeout_s: float = 10) -> tuple[int, str, bytes]:
        """Read until the close frame: its code, its reason, and the binary data before it."""
        data = b""
        async with asyncio.timeout(timeout_s):
            while True:
                op, payload = await self.frame()
                if op == 0x8:
                    code = struct.unpack(">H", payload[:2])[0] if payload else 1005
                    return code, payload[2:].decode("utf-8", "replace"), data
                if op == 0x2:
                    data += payload

    async def rfb_handshake(self) -> bytes:
        """Be noVNC: RFB 3.8, security type None, shared; the ServerInit's bytes."""
        buf = b""

        async def need(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n:
                op, payload = await self.frame()
                assert op == 0x2, (op, payload)
                buf += payload
            out, buf = buf[:n], buf[n:]
            return out

        assert await need(12) == b"RFB 003.008\n"
        await self.send(b"RFB 003.008\n")
        assert await need(2) == b"\x01\x01"
        await self.send(b"\x01")
        assert await need(4) == b"\x00\x00\x00\x00"
        await self.send(b"\x01")
        head = await need(24)
        (n,) = struct.unpack(">I", head[20:24])
        return head + await need(n)

    def close(self) -> None:
        self.writer.close()


async def ws_open(url: str, path: str, *, cookie: str = "", origin: str | None = None) -> WsClient:
    """Open ``path`` on ``url`` (http://host:port) as a browser would, with ``origin``."""
    host_port = url.split("//", 1)[1]
    host, port = host_port.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host_port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if cookie:
        lines.append(f"Cookie: {cookie}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    status = int(status_line.split()[1])
    while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
        pass
    return WsClient(status, reader, writer)
