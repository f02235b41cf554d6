"""The tunnel on loopback: mutual authentication, the allowlist, audit forwarding."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from audit.chain import read_events
from tests.gateway.harness import GATEWAY_ID, AgentState, lab, ssh_instrument
from tests.support import poll
from wire import Originator, encode_originator

WHO = encode_originator(Originator("s-42", "tanaka"))


async def test_broker_reaches_a_listed_instrument_and_sees_the_gateway_events(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path) as L:
        agent = await L.start_agent()
        conn = await L.listener.registry.wait_for(GATEWAY_ID, 10)
        await poll(lambda: agent.state is AgentState.CONNECTED, what="connected")
        reader, writer = await conn.open_connection("cobas-c503-1", L.echo.port, orig_host=WHO)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        status = agent.status()
        assert status["channels"][0]["engineer"] == "tanaka"
        assert status["channels"][0]["instrument"] == "cobas-c503-1"
        writer.close()
        await poll(
            lambda: len(L.emitter.of_type("gateway.channel_closed")) == 1,
            what="channel_closed forwarded to the broker",
        )
        opened = L.emitter.of_type("gateway.channel_opened")[0]
        assert opened.get("TargetSessionId") == "s-42"
        assert opened.get("GatewayId") == GATEWAY_ID
        assert L.emitter.of_type("gateway.channel_closed")[0].get("SrcBytes") == 4
        connected = L.emitter.of_type("gateway.connected")[0]
        assert abs(connected.details["clock_offset_s"]) < 5  # same clock here
        assert connected.details["version"] == "test"
        assert status["clock_offset_s"] is not None
        await poll(lambda: GATEWAY_ID in L.directory.inventory, what="inventory")
        item = L.directory.inventory[GATEWAY_ID][0]
        assert (item.name, item.reachable) == ("cobas-c503-1", True)
        await poll(lambda: agent.audit.unacked == 0, what="all local events acked")


async def test_allowlist_holds_whatever_the_broker_asks(tmp_path: Path) -> None:
    async with lab(tmp_path) as L:
        other = await type(L.echo)().start()  # a real service the hospital did not list
        agent = await L.start_agent()
        conn = await L.listener.registry.wait_for(GATEWAY_ID, 10)
        asks = [
            ("127.0.0.1", other.port),
            ("cobas-c503-1", other.port),
            ("10.1.2.3", 22),
            ("localhost", L.echo.port),
        ]
        for host, port in asks:
            with pytest.raises(asyncssh.ChannelOpenError) as info:
                await conn.open_connection(host, port, orig_host=WHO)
            assert info.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        assert other.connections == 0  # never touched, though it listens
        refused = [
            e for e in read_events(agent.config.audit_path) if e.type == "gateway.channel_refused"
        ]
        assert len(refused) == len(asks)
        assert "not listed" in refused[1].get("EventResultDetails")
        assert refused[0].get("ActorUsername") == "tanaka"
        await poll(
            lambda: len(L.emitter.of_type("gateway.channel_refused")) == len(asks),
            what="refusals forwarded",
        )
        await other.close()


async def test_gateway_refuses_a_broker_presenting_the_wrong_key(tmp_path: Path) -> None:
    """The gateway pinned another key: the broker cannot log in, no channel is possible."""
    async with lab(tmp_path, broker_key=asyncssh.generate_private_key("ssh-ed25519")) as L:
        agent = await L.start_agent()
        await poll(lambda: agent.last_error is not None, what="an error")
        await poll(lambda: agent.state is AgentState.BACKING_OFF, what="backing off")
        assert L.listener.registry.connection(GATEWAY_ID) is None
        assert not L.emitter.of_type("gateway.connected")


async def test_broker_refuses_a_gateway_key_it_never_enrolled(tmp_path: Path) -> None:
    async with lab(tmp_path, enrolled=False) as L:
        agent = await L.start_agent()
        await poll(lambda: bool(L.emitter.of_type("gateway.refused")), what="refusal")
        assert L.listener.registry.connection(GATEWAY_ID) is None
        assert agent.state in (AgentState.CONNECTING, AgentState.BACKING_OFF)
        ev = L.emitter.of_type("gateway.refused")[0]
        assert ev.details["key_fingerprint"] == L.gateway_key.get_fingerprint()


async def test_an_ssh_session_through_the_tunnel_names_the_engineer(tmp_path: Path) -> None:
    def hello(process: asyncssh.SSHServerProcess[str]) -> None:
        process.stdout.write("analyzer ready\n")
        process.exit(0)

    async with ssh_instrument(hello) as ssh_port, lab(tmp_path) as L:
        L.allow_port(ssh_port)
        agent = await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        tunnel = L.listener.registry.tunnel(GATEWAY_ID, "s-77", "yamada")
        assert tunnel is not None
        async with asyncssh.connect(
            "cobas-c503-1",
            ssh_port,
            tunnel=tunnel,
            known_hosts=None,
            username="service",
            config=None,
        ) as conn:
            result = await asyncio.wait_for(conn.run("status"), 5)
        assert result.stdout == "analyzer ready\n"
        await poll(lambda: len(L.emitter.of_type("gateway.channel_closed")) == 1)
        opened = L.emitter.of_type("gateway.channel_opened")[0]
        assert (
            opened.get("ActorUsername"),
            opened.get("TargetSessionId"),
            opened.get("TargetPortNumber"),
        ) == ("yamada", "s-77", ssh_port)
        assert agent.status()["channels"] == []
