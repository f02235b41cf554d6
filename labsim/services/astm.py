"""ASTM E1381 low-level link with E1394 records: the classic LIS host port.

Neutral state: only ``ENQ`` starts a transfer (answered with ``ACK``; other
bytes are ignored up to a limit). During a transfer each frame
``<STX> FN text <ETB|ETX> C1 C2 <CR><LF>`` is checked: frame number in
sequence (1..7, 0, 1, ...), checksum (sum of FN..ETB/ETX modulo 256, two
upper-case hex digits) and size (at most 247 bytes); good frames get ``ACK``,
bad ones ``NAK`` and change nothing. ``EOT`` ends the transfer and stores
its records. Reads time out after the service's read timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import ClassVar

from labsim.errors import ProtocolError
from labsim.net import LOOPBACK
from labsim.services.base import TcpService

ENQ, ACK, NAK, EOT = b"\x05", b"\x06", b"\x15", b"\x04"
STX, ETX, ETB = 0x02, 0x03, 0x17
MAX_FRAME = 247
MAX_NOISE = 1024
MAX_RECORDS = 1000


def checksum(body: bytes) -> bytes:
    """E1381 checksum of FN..ETB/ETX inclusive, as two upper-case hex digits."""
    return f"{sum(body) % 256:02X}".encode()


def frame(number: int, text: str, *, last: bool = True) -> bytes:
    """Build one frame (for clients and tests)."""
    body = f"{number % 8}{text}".encode() + bytes([ETX if last else ETB])
    return bytes([STX]) + body + checksum(body) + b"\r\n"


class AstmService(TcpService):
    """An ASTM host port that receives result transfers from an analyzer."""

    protocol: ClassVar[str] = "astm"
    role: ClassVar[str] = "astm"

    def __init__(
        self,
        *,
        name: str = "lis-astm",
        model: str = "LIS ASTM E1381/E1394 host port",
        department: str = "laboratory-information-system",
        host: str = LOOPBACK,
        port: int = 0,
        read_timeout_s: float = 30.0,
        keep: int = 100,
    ) -> None:
        super().__init__(
            name=name,
            model=model,
            department=department,
            host=host,
            port=port,
            read_timeout_s=read_timeout_s,
        )
        self.received: deque[list[str]] = deque(maxlen=keep)
        self.naks = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        noise = 0
        while True:
            byte = await self.read_some(reader, 1)
            if not byte:
                return
            if byte != ENQ:
                noise += 1
                if noise > MAX_NOISE:
                    raise ProtocolError(f"{self.name}: too much data outside a transfer")
                continue
            writer.write(ACK)
            await asyncio.wait_for(writer.drain(), self.read_timeout_s)
            records = await self._transfer(reader, writer)
            if records:
                self.received.append(records)

    async def _transfer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> list[str]:
        expected, text, records = 1, "", list[str]()
        while True:
            start = await self.read_exactly(reader, 1)
            if start == EOT:
                return records
            if start[0] != STX:
                continue  # line noise between frames
            raw = await self._read_frame(reader)
            ok = raw is not None and _valid(raw, expected)
            writer.write(ACK if ok else NAK)
            await asyncio.wait_for(writer.drain(), self.read_timeout_s)
            if not ok or raw is None:
                self.naks += 1
                continue
            expected += 1
            text += raw[1:-5].decode("latin-1")
            if raw[-5] == ETX:
                records += [r for r in text.split("\r") if r]
                text = ""
                if len(records) > MAX_RECORDS:
                    raise ProtocolError(f"{self.name}: too many records in one transfer")

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        """The frame after STX up to LF; None (and the rest drained) if too long."""
        buf = bytearray()
        while not buf.endswith(b"\r\n"):
            buf += await self.read_exactly(reader, 1)
            if len(buf) > MAX_FRAME:
                while not buf.endswith(b"\r\n"):
                    buf[:] = buf[-1:] + await self.read_exactly(reader, 1)
                return None
        return bytes(buf)


def _valid(raw: bytes, expected: int) -> bool:
    # raw = FN text (ETB|ETX) C1 C2 CR LF
    if len(raw) < 6 or raw[-5] not in (ETX, ETB):
        return False
    body, check = raw[:-4], raw[-4:-2]
    return raw[:1] == str(expected % 8).encode() and checksum(body) == check
