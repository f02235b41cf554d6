"""Loopback ports: one nobody listens on (``free_port``, the simulated lab's own
definition, so the repository has one) and connecting to one about to listen."""

from __future__ import annotations

import asyncio

from labsim.net import free_port


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


__all__ = ["connect_when_listening", "free_port"]
