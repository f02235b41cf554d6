"""The broker process as assembled by build_runtime: store, keys, API, sweeper."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient

from audit.testing import CapturingEmitter
from broker.access.passwords import Hasher
from broker.access.requests import NewRequest
from broker.assembly import build_runtime
from broker.runtime import sweep_forever
from broker.settings import BrokerSettings
from tests.control.conftest import T0, build_world
from tests.support import FakeClock, poll


async def test_runtime_serves_the_api_and_its_sweeper_expires_requests(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    emitter = CapturingEmitter()
    settings = BrokerSettings(data_dir=tmp_path / "data")
    rt = build_runtime(
        settings, emitter=emitter, clock=clock, hasher=Hasher(time_cost=1, memory_cost=64)
    )
    try:
        assert (tmp_path / "data" / "keys" / "credentials.key").stat().st_mode & 0o777 == 0o600
        assert rt.control.services.ctx.config.broker_host_key.startswith("ssh-ed25519 ")
        assert TestClient(rt.app).get("/v1/health").json() == {"status": "ok"}
        w = build_world(rt.control.services, clock)
        req = w.s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "x"))
        clock.advance(8 * 86400)
        task = asyncio.create_task(sweep_forever(rt.control, 0.01))
        await poll(
            lambda: w.s.requests.show(w.actors["eng"], req.id).request.status == "expired",
            10,
            "the sweeper to expire the request",
        )
        task.cancel()
        assert emitter.of_type("request.expired")
        # the change feed, the singleton jobs and this replica's own sweep duties
        assert len(rt.tasks) == 3 and rt.closers
    finally:
        rt.control.close()


def test_the_pinned_tunnel_key_is_one_asyncssh_can_load(tmp_path: Path) -> None:
    """Enrolment tokens pin the key the tunnel listener will present."""
    import asyncssh

    from broker.services import broker_host_public_key

    path = tmp_path / "keys" / "broker_host_key"
    line = broker_host_public_key(path)
    assert broker_host_public_key(path) == line  # created once, then reused
    key = asyncssh.read_private_key(path)
    assert key.export_public_key("openssh").decode().split()[:2] == line.split()[:2]
    assert path.stat().st_mode & 0o777 == 0o600
