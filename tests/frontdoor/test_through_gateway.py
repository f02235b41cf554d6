"""End to end: stock ssh -> front door -> reverse tunnel -> hospital gateway -> real sshd."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from broker.tunnel.connector import TunnelConnector
from tests.frontdoor.harness import World, run
from tests.gateway.harness import GATEWAY_ID, lab
from tests.support import connect_when_listening, poll


async def test_recorded_session_and_forward_through_the_hospital_gateway(
    granted: World, tmp_path: Path
) -> None:
    w = granted
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw") as L:
        L.config_path.write_text(
            L.config_path.read_text().replace(
                f"ports = [{L.echo.port}]", f"ports = [{L.echo.port}, {w.ssh_port}]"
            )
        )
        await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        t = w.policy.instruments[w.instrument]
        w.policy.instruments[w.instrument] = replace(
            t, gateway_id=GATEWAY_ID, ports=(w.ssh_port, L.echo.port)
        )
        w.door.connector = TunnelConnector(L.listener.registry)
        r = await run(w.ssh_argv(extra=(w.login(), "echo through-the-gateway")), w.env())
        assert r.rc == 0, r.err
        assert r.out == b"through-the-gateway\n"
        ended = w.events.of_type("session.ended")[0]
        assert ended.get("RecordingSize") > 0
        # the hospital's own audit copy names the engineer on the channel
        await poll(lambda: bool(L.emitter.of_type("gateway.channel_opened")), deadline_s=5)
        opened = L.emitter.of_type("gateway.channel_opened")[0]
        assert opened.get("ActorUsername") == "alice"
        assert opened.get("TargetPortNumber") == w.ssh_port
        # ssh -L to the instrument's vendor port, through the same gateway
        w.policy.grant(
            w.engineer, w.instrument, (L.echo.port,), ends=w.clock.now + timedelta(hours=1)
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            local = s.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *w.ssh_argv(
                batch=True,
                extra=(
                    "-o",
                    f"CertificateFile={w.cert_file()}",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-N",
                    "-L",
                    f"127.0.0.1:{local}:localhost:{L.echo.port}",
                    w.login(),
                ),
            ),
            env=w.env(),
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            reader, writer = await connect_when_listening(local)
            writer.write(b"ping through the hospital")
            got = await asyncio.wait_for(reader.readexactly(25), 10)
            assert got == b"ping through the hospital"
            writer.close()
            await poll(lambda: bool(w.events.of_type("forward.closed")), deadline_s=10)
        finally:
            proc.terminate()
            await proc.wait()
        assert w.events.of_type("forward.closed")[0].get("DstBytes") == 25


async def test_port_the_gateway_does_not_list_is_refused_even_if_granted(
    granted: World, tmp_path: Path
) -> None:
    """The hospital's allowlist is the final word: a granted port it does not list fails."""
    w = granted
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw") as L:
        await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        t = w.policy.instruments[w.instrument]
        w.policy.instruments[w.instrument] = replace(t, gateway_id=GATEWAY_ID)
        w.door.connector = TunnelConnector(L.listener.registry)
        w.policy.grant(
            w.engineer, w.instrument, (w.ssh_port,), ends=w.clock.now + timedelta(hours=1)
        )
        r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
        assert r.rc == 1
        assert b"the hospital gateway refused the connection to cobas-c503-1" in r.err
        assert b"is not listed" in r.err
        refused = w.events.of_type("session.refused")[0]
        assert refused.get("EventResultDetails") == "instrument_error"
