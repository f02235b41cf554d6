"""The front door inside the broker process, answered by the control plane's store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from audit.testing import CapturingEmitter
from broker.assembly import attach_front_door, build_runtime
from broker.settings import BrokerSettings
from broker.tunnel.connector import DirectConnector
from tests.frontdoor.harness import engineer_key
from tests.support import poll


async def test_serve_runs_the_front_door_over_the_store(tmp_path: Path) -> None:
    events = CapturingEmitter()
    rt = build_runtime(BrokerSettings(data_dir=tmp_path / "data"), emitter=events)
    handle = attach_front_door(rt, DirectConnector(), port=0)
    # every task: the front door and the change feed it asks before each login
    tasks = [asyncio.ensure_future(t()) for t in rt.tasks]
    try:
        await asyncio.wait_for(handle.ready.wait(), 10)
        assert rt.feed is not None
        await asyncio.wait_for(rt.feed.ready.wait(), 10)
        assert handle.door is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", handle.door.port)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SSH-2.0-")
        writer.close()
        keys = tmp_path / "data" / "keys"
        assert (keys / "ssh_front_door_host_key").exists() and (keys / "ssh_user_ca").exists()
        # nobody is registered: a key login is refused and logged in the broker's trail
        key_path, _ = engineer_key(tmp_path)
        proc = await asyncio.create_subprocess_exec(
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(handle.door.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(key_path),
            "mallory+cobas-c503-1@127.0.0.1",
            "true",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), 20) == 255

        def reasons() -> list[str]:
            return [e.get("EventResultDetails") for e in events.of_type("ssh.login")]

        await poll(lambda: "unknown user or key" in reasons(), 2, "the refusal logged")
        assert reasons() == ["no credentials offered", "unknown user or key"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rt.control.close()


async def test_serve_adds_the_session_and_certificate_routes(tmp_path: Path) -> None:
    """Unauthenticated callers get the API's 401 from both front door routes."""
    import httpx

    rt = build_runtime(BrokerSettings(data_dir=tmp_path / "data"), emitter=CapturingEmitter())
    attach_front_door(rt, DirectConnector(), port=0, sessions_routes=True)
    try:
        transport = httpx.ASGITransport(app=rt.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as http:
            r = await http.get("/v1/sessions")
            assert r.status_code == 401 and r.json()["error"]["message"]
            r = await http.post("/v1/ssh/certificate", json={"public_key": "x" * 30})
            assert r.status_code == 401
    finally:
        rt.control.close()
