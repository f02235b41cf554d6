"""The common shape of a simulated TCP service: loopback listener, limits, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import ClassVar

from labsim.errors import InstrumentStartError, ProtocolError
from labsim.model import Instrument
from labsim.net import LOOPBACK


class TcpService(ABC):
    """A TCP listener on loopback; subclasses implement `handle` for one connection.

    Every read goes through `read_exactly`/`read_some`, which apply the
    service's read timeout; connections beyond `max_connections` are closed
    at once.
    """

    protocol: ClassVar[str]
    role: ClassVar[str]

    def __init__(
        self,
        *,
        name: str,
        model: str,
        department: str,
        host: str = LOOPBACK,
        port: int = 0,
        read_timeout_s: float = 30.0,
        max_connections: int = 32,
    ) -> None:
        self.name = name
        self.model = model
        self.department = department
        self.host = host
        self._requested_port = port
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpService:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self._requested_port, limit=64 * 1024
            )
        except OSError as exc:
            raise InstrumentStartError(f"{self.name}: cannot listen: {exc}") from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self.connections >= self.max_connections:
            writer.close()
            return
        self.connections += 1
        if task is not None:
            self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (ProtocolError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    @abstractmethod
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection; raising ProtocolError closes it."""

    async def read_exactly(self, reader: asyncio.StreamReader, n: int) -> bytes:
        """Exactly `n` bytes within the read timeout (ProtocolError otherwise)."""
        try:
            return await asyncio.wait_for(reader.readexactly(n), self.read_timeout_s)
        except TimeoutError as exc:
            raise ProtocolError(f"{self.name}: read timed out") from exc

    async def read_some(self, reader: asyncio.StreamReader, limit: int) -> bytes:
        """Up to `limit` bytes within the read timeout; b"" at end of stream."""
        try:
            return await asyncio.wait_for(reader.read(limit), self.read_timeout_s)
        except TimeoutError as exc:
            raise ProtocolError(f"{self.name}: read timed out") from exc

    @property
    def info(self) -> Instrument:
        return Instrument(
            name=self.name,
            host=self.host,
            ports=(self.port,),
            protocol=self.protocol,
            department=self.department,
            model=self.model,
            backend="tcp",
            services={self.role: self.port},
        )
