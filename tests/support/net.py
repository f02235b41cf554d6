"""Loopback ports: one nobody listens on (``free_port``, the simulated lab's own
definition, so the repository has one), whether something listens on one
(``listening``), and connecting to one about to listen."""

from __future__ import annotations

import asyncio
import socket

from labsim.net import free_port


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` now (half a second
    at most to tell)."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def connect_when_listening(
    port: int, deadline_s: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open 127.0.0.1:``port`` as soon as something listens there (an ``ssh -L`` starting
    up); the last connection error is raised once ``deadline_s`` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while True:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


__all__ = ["connect_when_listening", "free_port", "listening"]
