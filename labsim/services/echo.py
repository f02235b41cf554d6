"""A plain maintenance data port: echoes what it gets, or reads and discards it."""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

from labsim.net import LOOPBACK
from labsim.services.base import TcpService

CHUNK = 64 * 1024


class EchoService(TcpService):
    """``mode="echo"`` sends every byte back; ``mode="sink"`` only counts them.

    Connections idle for longer than the read timeout are closed.
    """

    protocol: ClassVar[str] = "tcp"
    role: ClassVar[str] = "echo"

    def __init__(
        self,
        *,
        name: str = "maintenance-port",
        model: str = "vendor maintenance data port",
        department: str = "laboratory-automation",
        host: str = LOOPBACK,
        port: int = 0,
        read_timeout_s: float = 30.0,
        mode: Literal["echo", "sink"] = "echo",
    ) -> None:
        super().__init__(
            name=name,
            model=model,
            department=department,
            host=host,
            port=port,
            read_timeout_s=read_timeout_s,
        )
        self.mode = mode
        self.bytes_received = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await self.read_some(reader, CHUNK)
            if not data:
                return
            self.bytes_received += len(data)
            if self.mode == "echo":
                writer.write(data)
                await asyncio.wait_for(writer.drain(), self.read_timeout_s)
