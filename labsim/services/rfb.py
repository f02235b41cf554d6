"""A VNC-like remote screen: the RFB 3.8 handshake a vendor's viewer expects.

Sequence: server version ``RFB 003.008``, client version (3.3, 3.7 or 3.8),
security type None, SecurityResult OK, ClientInit, ServerInit (screen size,
32-bit true-colour pixel format, desktop name). Afterwards client messages
are parsed with fixed sizes and limits: key and pointer events are counted,
a non-incremental update request is answered with one RRE rectangle (a
solid screen) when the client offered RRE, otherwise with an empty update.
Unknown message types or oversized cut-text close the connection.
"""

from __future__ import annotations

import asyncio
import re
import struct
from typing import ClassVar

from labsim.errors import ProtocolError
from labsim.net import LOOPBACK
from labsim.services.base import TcpService

VERSION = b"RFB 003.008\n"
CLIENT_VERSION = re.compile(rb"RFB 003\.00[378]\n")
MAX_CUT_TEXT = 64 * 1024
MAX_ENCODINGS = 64
RRE = 2
# bpp, depth, big-endian, true-colour, red/green/blue max, red/green/blue shift
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


class RfbService(TcpService):
    """The service screen of an analyzer PC, reachable with a VNC viewer."""

    protocol: ClassVar[str] = "rfb"
    role: ClassVar[str] = "rfb"

    def __init__(
        self,
        *,
        name: str = "xn-1000-1",
        model: str = "Sysmex XN-1000 service screen",
        department: str = "hematology",
        host: str = LOOPBACK,
        port: int = 0,
        read_timeout_s: float = 30.0,
        width: int = 1024,
        height: int = 768,
    ) -> None:
        super().__init__(
            name=name,
            model=model,
            department=department,
            host=host,
            port=port,
            read_timeout_s=read_timeout_s,
        )
        self.width = width
        self.height = height
        self.input_events = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(VERSION)
        client_version = await self.read_exactly(reader, 12)
        if not CLIENT_VERSION.fullmatch(client_version):
            raise ProtocolError(f"{self.name}: unsupported RFB version")
        if client_version == b"RFB 003.003\n":
            writer.write(struct.pack(">I", 1))  # 3.3: the server picks "None"
        else:
            writer.write(bytes([1, 1]))  # one security type: None
            chosen = await self.read_exactly(reader, 1)
            if chosen != b"\x01":
                reason = b"security type not offered"
                tail = struct.pack(">I", len(reason)) + reason if client_version == VERSION else b""
                writer.write(struct.pack(">I", 1) + tail)
                await writer.drain()
                return
            if client_version == VERSION:
                writer.write(struct.pack(">I", 0))  # SecurityResult (3.8 only for None)
        await self.read_exactly(reader, 1)  # ClientInit (shared flag)
        title = f"{self.name} service screen".encode()
        writer.write(
            struct.pack(">HH", self.width, self.height) + PIXEL_FORMAT
            + struct.pack(">I", len(title)) + title
        )  # fmt: skip
        await writer.drain()
        await self._messages(reader, writer)

    async def _messages(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bpp, encodings = 32, set[int]()
        while True:
            head = await self.read_some(reader, 1)
            if not head:
                return
            kind = head[0]
            if kind == 0:  # SetPixelFormat
                body = await self.read_exactly(reader, 19)
                bpp = body[3]
                if bpp not in (8, 16, 32):
                    raise ProtocolError(f"{self.name}: unsupported bits per pixel {bpp}")
            elif kind == 2:  # SetEncodings
                (count,) = struct.unpack(">xH", await self.read_exactly(reader, 3))
                if count > MAX_ENCODINGS:
                    raise ProtocolError(f"{self.name}: too many encodings")
                raw = await self.read_exactly(reader, 4 * count)
                encodings = set(struct.unpack(f">{count}i", raw))
            elif kind == 3:  # FramebufferUpdateRequest
                incremental = (await self.read_exactly(reader, 9))[0]
                if not incremental:
                    writer.write(self._full_update(bpp, RRE in encodings))
                    await asyncio.wait_for(writer.drain(), self.read_timeout_s)
            elif kind == 4:  # KeyEvent
                await self.read_exactly(reader, 7)
                self.input_events += 1
            elif kind == 5:  # PointerEvent
                await self.read_exactly(reader, 5)
                self.input_events += 1
            elif kind == 6:  # ClientCutText
                (length,) = struct.unpack(">3xI", await self.read_exactly(reader, 7))
                if length > MAX_CUT_TEXT:
                    raise ProtocolError(f"{self.name}: cut text too long")
                await self.read_exactly(reader, length)
            else:
                raise ProtocolError(f"{self.name}: unknown client message {kind}")

    def _full_update(self, bpp: int, rre: bool) -> bytes:
        if not rre:
            return struct.pack(">BxH", 0, 0)
        background = (0x1F3A5F).to_bytes(4, "little")[: bpp // 8]
        rect = struct.pack(">HHHHi", 0, 0, self.width, self.height, RRE)
        return struct.pack(">BxH", 0, 1) + rect + struct.pack(">I", 0) + background
