"""A TCP balancer on 127.0.0.1: the tests' stand-in for one load-balanced address
(Azure Container Apps' TCP ingress, which is Envoy and cannot run here).

Like Envoy's TCP proxy it picks a backend per *connection* (round-robin), not per
client, and tries the next backend when one refuses the connection (a dead replica),
then copies bytes both ways until either side closes.  It runs its own event loop in
a thread, so synchronous tests (real ``hoshu serve`` processes) can use it as well
as asyncio ones.  ``picks`` records which backend port each connection went to.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence

CONNECT_TIMEOUT_S = 3.0
CHUNK = 64 * 1024


class TcpBalancer:
    def __init__(self, backends: Sequence[int], host: str = "127.0.0.1") -> None:
        self.backends = list(backends)
        self.host = host
        self.port = 0
        self.picks: list[int] = []
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> TcpBalancer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._open):
                w.close()
            await self._server.wait_closed()

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                pair = await asyncio.wait_for(
                    asyncio.open_connection(self.host, port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                continue  # Envoy's connect retry: the next backend
            self.picks.append(port)
            return pair
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._upstream()
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            self._open.difference_update((writer, up_writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(CHUNK):
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()
