"""Probe the configured instruments: reachability and SSH host key fingerprints.

A port counts as reachable when a TCP connection to it completes within the
timeout.  For SSH instruments the host key is fetched without logging in and
reported as an OpenSSH ``SHA256:`` fingerprint; the broker's control plane
compares it with the accepted one (a change raises ``instrument.key_changed``
and blocks sessions until an approver accepts the new key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncssh

from gateway.config import Instrument
from wire import InventoryItem

log = logging.getLogger(__name__)
_PARALLEL = 16


async def _port_open(host: str, port: int, wait_s: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), wait_s)
    return True


async def ssh_fingerprint(host: str, port: int, wait_s: float) -> str | None:
    """``SHA256:...`` of the instrument's SSH host key, or None if it did not answer."""
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port, config=None), wait_s)
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        log.info("no SSH host key from %s:%d: %s", host, port, exc)
        return None
    return key.get_fingerprint() if key is not None else None


async def probe_one(inst: Instrument, wait_s: float) -> InventoryItem:
    results = [await _port_open(inst.host, p, wait_s) for p in inst.ports]
    fingerprint = None
    if inst.protocol in ("ssh", "sftp"):
        ssh_port = 22 if 22 in inst.ports else inst.ports[0]
        if results[inst.ports.index(ssh_port)]:
            fingerprint = await ssh_fingerprint(inst.host, ssh_port, wait_s)
    return InventoryItem(
        inst.name,
        inst.host,
        inst.ports,
        inst.protocol,
        inst.department,
        inst.model,
        any(results),
        fingerprint,
    )


async def probe(instruments: tuple[Instrument, ...], *, wait_s: float = 3.0) -> list[InventoryItem]:
    """Probe every instrument (at most 16 at a time)."""
    sem = asyncio.Semaphore(_PARALLEL)

    async def one(inst: Instrument) -> InventoryItem:
        async with sem:
            return await probe_one(inst, wait_s)

    return list(await asyncio.gather(*(one(i) for i in instruments)))
