"""HL7 v2 over MLLP: the host-interface port of an analyzer or a LIS.

Framing (MLLP): ``<VT> message <FS><CR>``. Each well-formed message gets an
original-mode acknowledgement: ``MSA|AA`` when it parses as HL7 (an ``MSH``
segment with a control id), ``MSA|AR`` when it does not. A frame larger than
`max_message_bytes` is answered with ``MSA|AR`` and the connection is closed,
as is one that does not start with ``<VT>`` or stalls past the read timeout.
Received messages are kept in memory (bounded) so tests can see what arrived.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from labsim.errors import ProtocolError
from labsim.net import LOOPBACK
from labsim.services.base import TcpService

VT = b"\x0b"
END = b"\x1c\r"
CHUNK = 4096


@dataclass(frozen=True)
class Msh:
    """The MSH fields an acknowledgement needs."""

    field_sep: str
    encoding: str
    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    message_type: str
    control_id: str
    version: str


def parse_msh(message: str) -> Msh | None:
    """Parse the MSH segment at the start of `message`; None if there is none."""
    first = message.replace("\n", "\r").split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return None
    sep = first[3]
    fields = first.split(sep)
    fields += [""] * (12 - len(fields))
    return Msh(
        field_sep=sep,
        encoding=fields[1] or "^~\\&",
        sending_app=fields[2],
        sending_facility=fields[3],
        receiving_app=fields[4],
        receiving_facility=fields[5],
        message_type=fields[8],
        control_id=fields[9],
        version=fields[11] or "2.5.1",
    )


def build_ack(msh: Msh | None, code: str, control_id: str, now: datetime, text: str = "") -> str:
    """An original-mode ACK (``MSH`` + ``MSA`` [+ ``ERR``]) to the message with `msh`."""
    m = msh or Msh("|", "^~\\&", "", "", "", "", "", "", "2.5.1")
    sep = m.field_sep
    comp = m.encoding[0] if m.encoding else "^"
    trigger = m.message_type.split(comp)[1] if comp in m.message_type else ""
    msh_fields = [
        "MSH", m.encoding, m.receiving_app or "LIS", m.receiving_facility or "LAB",
        m.sending_app, m.sending_facility, now.strftime("%Y%m%d%H%M%S"), "",
        f"ACK{comp}{trigger}{comp}ACK", control_id, "P", m.version,
    ]  # fmt: skip
    segments = [sep.join(msh_fields), sep.join(["MSA", code, m.control_id])]
    if text:
        segments.append(sep.join(["ERR", "", "", "", "E", "", "", "", text]))
    return "\r".join(segments) + "\r"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Hl7Service(TcpService):
    """An MLLP listener that acknowledges every HL7 v2 message it receives."""

    protocol: ClassVar[str] = "hl7-mllp"
    role: ClassVar[str] = "hl7"

    def __init__(
        self,
        *,
        name: str = "lis-hl7",
        model: str = "LIS host interface (HL7 v2.5.1 over MLLP)",
        department: str = "laboratory-information-system",
        host: str = LOOPBACK,
        port: int = 0,
        read_timeout_s: float = 30.0,
        max_message_bytes: int = 64 * 1024,
        keep: int = 100,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        super().__init__(
            name=name,
            model=model,
            department=department,
            host=host,
            port=port,
            read_timeout_s=read_timeout_s,
        )
        self.max_message_bytes = max_message_bytes
        self.received: deque[str] = deque(maxlen=keep)
        self.rejected = 0
        self._clock = clock
        self._ids = itertools.count(1)

    def _ack(self, msh: Msh | None, code: str, text: str = "") -> bytes:
        control = f"ACK{next(self._ids):08d}"
        return VT + build_ack(msh, code, control, self._clock(), text).encode() + END

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        while True:
            while not buf:
                chunk = await self.read_some(reader, CHUNK)
                if not chunk:
                    return
                buf += chunk.lstrip(b"\r\n")
            if not buf.startswith(VT):
                self.rejected += 1
                raise ProtocolError(f"{self.name}: data outside an MLLP frame")
            while (end := buf.find(END)) < 0:
                if len(buf) > self.max_message_bytes + 1:
                    await self._refuse_oversized(buf, writer)
                    return
                chunk = await self.read_some(reader, CHUNK)
                if not chunk:
                    return
                buf += chunk
            if end - 1 > self.max_message_bytes:
                await self._refuse_oversized(buf, writer)
                return
            message = bytes(buf[1:end]).decode("utf-8", errors="replace")
            del buf[: end + len(END)]
            writer.write(self._answer(message))
            await asyncio.wait_for(writer.drain(), self.read_timeout_s)

    async def _refuse_oversized(self, buf: bytearray, writer: asyncio.StreamWriter) -> None:
        """Answer ``MSA|AR`` to an oversized frame; the caller then closes the connection."""
        self.rejected += 1
        head = buf[1 : CHUNK + 1].decode("utf-8", errors="replace")
        text = f"message exceeds {self.max_message_bytes} bytes"
        writer.write(self._ack(parse_msh(head), "AR", text))
        await asyncio.wait_for(writer.drain(), self.read_timeout_s)

    def _answer(self, message: str) -> bytes:
        msh = parse_msh(message)
        if msh is None or not msh.control_id:
            self.rejected += 1
            return self._ack(msh, "AR", "not an HL7 v2 message (MSH with control id required)")
        self.received.append(message)
        return self._ack(msh, "AA")
