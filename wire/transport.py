"""Write coalescing for SSH connections, shared by both ends of the tunnel.

asyncssh writes every SSH packet to the socket on its own and, when
encrypting, puts an empty ignore packet before each data packet: two ``send``
calls per 32 KiB.  :class:`CoalescingTransport` joins the writes of one event
loop pass into one.  The broker's front door and the gateway's side of the
tunnel both install it; it is transport plumbing, not part of the message
contract, and imports nothing of hoshu's.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport(asyncio.Transport):
    """A socket transport whose writes within one event-loop pass go out as one.

    asyncssh writes every SSH packet to its transport on its own and, when
    encrypting, puts an empty ignore packet before each data packet: two
    ``send`` calls per 32 KiB of a session.  This wrapper queues the writes and
    hands them to the real transport joined, once per loop pass (``call_soon``),
    so the same bytes leave in the same order with a fraction of the system
    calls.  Closing or aborting sends what is queued first.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._t = transport
        self._queue: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._queue:
            self._loop.call_soon(self._flush)
        self._queue.append(bytes(data))

    def _flush(self) -> None:
        if not self._queue:
            return
        data = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
        self._queue.clear()
        if not self._t.is_closing():
            self._t.write(data)

    def close(self) -> None:
        self._flush()
        self._t.close()

    def abort(self) -> None:
        self._flush()
        self._t.abort()

    def is_closing(self) -> bool:
        return self._t.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._t.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._t.pause_reading()

    def resume_reading(self) -> None:
        self._t.resume_reading()

    def is_reading(self) -> bool:
        return self._t.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size() + sum(len(b) for b in self._queue)

    def can_write_eof(self) -> bool:
        return False
