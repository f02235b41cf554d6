"""Kill switch, reconnect after a broker restart, window-only mode, bad control input."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.control import ControlServer, read_state, request
from tests.gateway.harness import GATEWAY_ID, AgentState, lab
from tests.support import poll
from wire import MAX_MESSAGE_BYTES, Originator, Purpose, Windows, encode, encode_originator

WHO = encode_originator(Originator("s-7", "sato"))


async def test_pause_cuts_open_channels_within_a_second_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path) as L:
        agent = await L.start_agent()
        control = ControlServer(agent.config.control_socket, agent.handle_control)
        await control.start()
        assert oct(agent.config.control_socket.stat().st_mode & 0o777) == "0o600"
        conn = await L.listener.registry.wait_for(GATEWAY_ID, 10)
        reader, writer = await conn.open_connection("cobas-c503-1", L.echo.port, orig_host=WHO)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"

        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await asyncio.to_thread(request, agent.config.control_socket, "pause", "ward-it")
        assert answer["paused"] is True
        assert await asyncio.wait_for(reader.read(100), 1.0) == b""  # channel cut
        assert loop.time() - started < 1.0
        await L.listener.registry.wait_gone(GATEWAY_ID, 1.0)
        assert agent.state is AgentState.PAUSED
        assert read_state(agent.config.state_path).paused

        # a restarted gateway stays paused: it never dials the broker
        await control.close()
        await L.stop_agent(agent)
        agent = await L.start_agent()
        await poll(lambda: agent.state is AgentState.PAUSED, what="paused after restart")
        await asyncio.sleep(1.0)  # bounded check that nothing dials out meanwhile
        assert L.listener.registry.connection(GATEWAY_ID) is None

        await agent.resume("ward-it")
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        await poll(lambda: bool(L.emitter.of_type("gateway.resumed")), what="resume forwarded")
        paused = L.emitter.of_type("gateway.paused")
        assert len(paused) == 1 and paused[0].details["channels_closed"] == 1
        assert paused[0].get("ActorUsername") == f"ward-it (uid {os.getuid()})"


async def test_pause_written_while_the_gateway_is_stopped_is_applied_and_audited(
    tmp_path: Path,
) -> None:
    from gateway.cli import main

    async with lab(tmp_path) as L:
        rc = await asyncio.to_thread(
            main, ["--config", str(L.config_path), "pause", "--by", "night-shift"]
        )
        assert rc == 0
        agent = await L.start_agent()
        await poll(lambda: agent.state is AgentState.PAUSED, what="paused")
        await poll(lambda: agent.audit.unacked == 1, what="the pause is in the local copy")
        assert read_state(agent.config.state_path).pending is None


async def test_gateway_is_back_within_10_s_of_a_broker_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with lab(tmp_path, tunnel={"backoff_max_s": 5}) as L:
        agent = await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        port = L.listener.port
        await L.listener.close()
        await poll(lambda: agent.state is AgentState.BACKING_OFF, what="backing off")

        def failed_dials() -> int:
            return sum(
                r.levelno == logging.WARNING
                and r.getMessage().startswith("cannot connect to the broker")
                for r in caplog.records
            )

        # the broker stays down long enough for the backoff to grow: after five failed
        # dials (0.2 s doubling) the gateway waits 1.6-3.2 s before the next one
        await poll(lambda: failed_dials() >= 5, 10, "five failed dials")
        await L.restart_broker()
        assert L.listener.port == port
        loop = asyncio.get_running_loop()
        up = loop.time()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        assert loop.time() - up < 10
        await poll(lambda: agent.state is AgentState.CONNECTED, what="connected")


async def test_window_only_mode_holds_the_tunnel_only_inside_the_window(tmp_path: Path) -> None:
    async with lab(tmp_path, mode="window-only") as L:
        registry = L.listener.registry
        now = datetime.now(UTC)
        start, end = now + timedelta(seconds=2), now + timedelta(seconds=4)
        L.directory.windows = [(start, end)]
        agent = await L.start_agent()
        # short checks learn the window without holding a tunnel
        await poll(lambda: agent.windows == [(start, end)], what="window learnt")
        assert registry.connection(GATEWAY_ID) is None
        assert agent.state in (AgentState.IDLE, AgentState.CONNECTING, AgentState.CONNECTED)
        conn = await registry.wait_for(GATEWAY_ID, 5)
        opened_at = datetime.now(UTC)
        assert opened_at >= start
        info = registry.info(GATEWAY_ID)
        assert info is not None and info.conversation.hello is not None
        assert info.conversation.hello.purpose is Purpose.TUNNEL
        r, w = await conn.open_connection("cobas-c503-1", L.echo.port, orig_host=WHO)
        w.write(b"x")
        assert await asyncio.wait_for(r.readexactly(1), 5) == b"x"
        await registry.wait_gone(GATEWAY_ID, 5)
        closed_at = datetime.now(UTC)
        assert end <= closed_at < end + timedelta(seconds=1.5)
        assert await asyncio.wait_for(r.read(10), 1) == b""
        await poll(lambda: agent.state is AgentState.IDLE, what="idle after the window")


async def test_bad_control_messages_are_answered_and_ignored_both_ways(tmp_path: Path) -> None:
    async with lab(tmp_path) as L:
        agent = await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        await poll(lambda: agent.link is not None and agent.state is AgentState.CONNECTED)
        info = L.listener.registry.info(GATEWAY_ID)
        assert info is not None and agent.link is not None
        conv = info.conversation
        raw = conv.channel
        assert raw is not None
        raw.write(b"garbage\n")
        raw.write(b'{"type":"windows","windows":"soon"}\n')
        raw.write(b'{"type":"self_destruct"}\n')
        raw.write(b"[" + b"1," * (MAX_MESSAGE_BYTES // 2) + b"1]\n")
        raw.write(encode(Windows(windows=())))
        link = agent.link
        await poll(lambda: link.bad_messages == 4, what="four bad lines counted")
        # the gateway said what was wrong, and the broker survived the answers
        await poll(lambda: conv.bad_messages == 0 and agent.state is AgentState.CONNECTED)
        # the other way: a gateway sending nonsense does not drop the tunnel
        assert link.control is not None
        link.control.send(b"{not json}\n")
        await poll(lambda: conv.bad_messages == 1, what="broker counted the bad line")
        assert L.listener.registry.connection(GATEWAY_ID) is not None
        conn = L.listener.registry.connection(GATEWAY_ID)
        assert conn is not None
        r, w = await conn.open_connection("cobas-c503-1", L.echo.port, orig_host=WHO)
        w.write(b"ok")
        assert await asyncio.wait_for(r.readexactly(2), 5) == b"ok"
        assert agent.link is link  # same connection all along


async def test_a_silent_broker_is_detected_by_heartbeats_and_the_gateway_reconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lab(tmp_path) as L:
        agent = await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        info = L.listener.registry.info(GATEWAY_ID)
        assert info is not None
        first = agent.link
        # the broker side goes quiet (every control message leaves through send); TCP and
        # SSH stay up
        monkeypatch.setattr(info.conversation, "send", lambda message: None)
        await poll(
            lambda: agent.last_error is not None and "heartbeat" in agent.last_error,
            deadline_s=6,
            what="dead path detected",
        )
        await poll(
            lambda: agent.state is AgentState.CONNECTED and agent.link is not first,
            deadline_s=10,
            what="a fresh tunnel",
        )


async def test_a_corrupted_pause_state_keeps_the_gateway_paused_until_resumed(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path) as L:
        L.config.state_path.write_text("{half a json")
        agent = await L.start_agent()
        await poll(lambda: agent.state is AgentState.PAUSED, what="paused (fail closed)")
        assert "unreadable" in (agent.status()["last_error"] or "")
        assert L.listener.registry.connection(GATEWAY_ID) is None
        await agent.resume("it-desk")
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        assert not read_state(agent.config.state_path).paused


async def test_the_control_socket_answers_garbage_with_an_error_and_keeps_serving(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path) as L:
        agent = await L.start_agent()
        control = ControlServer(agent.config.control_socket, agent.handle_control)
        await control.start()
        try:
            for junk in (b"nonsense\n", b'{"cmd":"rm -rf"}\n', b"x" * 100_000 + b"\n"):
                r, w = await asyncio.open_unix_connection(str(agent.config.control_socket))
                w.write(junk)
                answer = await asyncio.wait_for(r.readline(), 5)
                w.close()
                assert b'"ok": false' in answer and b"bad control request" in answer
            status = await asyncio.to_thread(request, agent.config.control_socket, "status", "x")
            assert status["ok"] and not status["paused"]
        finally:
            await control.close()
