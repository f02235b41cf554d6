"""Wiring the front door into the broker process (``hoshu serve``).

:func:`attach_front_door` adds the front door to a :class:`broker.runtime.Runtime`:
the control plane's store answers the :class:`~broker.ssh.ports.AccessPolicy`
(:class:`broker.store.directory.StoreAccessPolicy`), the control plane's audit
emitter receives every event, recordings go to ``settings.recordings_dir``, and
instruments are reached through ``connector`` (``TunnelConnector(registry)``
in production).  Keys live beside the broker's other keys:
``keys/ssh_front_door_host_key`` and ``keys/ssh_user_ca`` (created on first use).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from audit.keyfiles import create_secret
from broker.ssh.ca import UserCA
from broker.ssh.frontdoor import FrontDoor, FrontDoorOptions, start_front_door
from broker.ssh.ports import (
    AccessPolicy,
    InstrumentConnector,
)

if TYPE_CHECKING:
    from broker.runtime import Runtime


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    create_secret(path, key.export_private_key())  # born 0600, a planted file is refused
    key.write_public_key(path.with_name(path.name + ".pub"))
    return key


def store_grants_end(services: Any) -> Callable[[str, datetime], datetime | None]:
    """When the user's live grants end (the latest), from the control plane's store; a
    grant counts only as :func:`broker.access.grants.grant_holds` says."""
    from broker.access.grants import latest_grant_end

    def grants_end(user_id: str, now: datetime) -> datetime | None:
        with services.ctx.uow() as tx:
            end: datetime | None = latest_grant_end(tx, user_id, now)
            return end

    return grants_end


@dataclass
class FrontDoorHandle:
    """Filled in once the task has started: ``door`` (port, sessions, ca)."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    door: FrontDoor | None = None


def attach_front_door(
    rt: Runtime,
    connector: InstrumentConnector,
    *,
    policy: AccessPolicy | None = None,
    options: FrontDoorOptions | None = None,
    port: int | None = None,
    sessions_routes: bool = False,
) -> FrontDoorHandle:
    """Register the front door as a task of ``rt`` and its routes on ``rt.app``.

    Routes: ``/v1/ssh/certificate`` (:mod:`broker.ssh.cert_api`) and, with
    ``sessions_routes``, ``/v1/sessions`` (:mod:`broker.ssh.sessions_api`).
    Returns a handle whose ``door`` is set once the listener runs.
    """
    from broker.ssh.cert_api import build_cert_router
    from broker.ssh.sessions_api import build_sessions_router
    from broker.store.directory import StoreAccessPolicy

    settings = rt.settings
    services = rt.control.services
    handle = FrontDoorHandle()
    host_key = load_or_create_host_key(settings.front_door_host_key_path)
    ca = UserCA.load_or_create(settings.user_ca_key_path)
    the_policy = policy if policy is not None else StoreAccessPolicy(services)
    emitter = services.ctx.emitter
    if sessions_routes:
        rt.app.include_router(build_sessions_router(
            lambda: handle.door.sessions if handle.door is not None else None, emitter))
    rt.app.include_router(build_cert_router(
        lambda: ca, the_policy, store_grants_end(services), emitter, services.ctx.now))

    async def run() -> None:
        door = await start_front_door(
            settings, the_policy, connector, emitter, settings.recordings_dir, host_key,
            ca=ca, options=options, clock=services.ctx.now, port=port)
        handle.door = door
        handle.ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await door.close()

    rt.tasks.append(run)
    return handle
