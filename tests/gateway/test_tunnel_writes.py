"""The broker's side of a gateway tunnel joins its packets per event-loop pass, and
every byte still crosses whole and in order, keystrokes and bulk alike."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncssh

from tests.gateway.harness import GATEWAY_ID, lab, ssh_instrument
from wire import Originator, encode_originator
from wire.transport import CoalescingTransport

WHO = encode_originator(Originator("s-writes", "tanaka"))


async def test_the_broker_side_of_a_tunnel_writes_through_a_coalescing_transport(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path) as L:
        await L.start_agent()
        conn = await L.listener.registry.wait_for(GATEWAY_ID, 10)
        # asyncssh member SSHConnection._transport (the fence swaps it: wire.sshcompat)
        transport = getattr(conn, "_transport", None)
        assert isinstance(transport, CoalescingTransport), type(transport).__name__


async def test_keystrokes_and_bulk_cross_a_coalesced_tunnel_whole_and_in_order(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path) as L:
        await L.start_agent()
        conn = await L.listener.registry.wait_for(GATEWAY_ID, 10)
        # two channels at once on the one tunnel: typed bytes and a bulk transfer
        k_reader, k_writer = await conn.open_connection("cobas-c503-1", L.echo.port, orig_host=WHO)
        b_reader, b_writer = await conn.open_connection("cobas-c503-1", L.echo.port, orig_host=WHO)
        typed = bytes(range(32, 127)) * 4
        bulk = os.urandom(3 * 1024 * 1024)

        async def type_keys() -> bytes:
            for i in range(len(typed)):
                k_writer.write(typed[i : i + 1])  # one packet per key, as a person types
                if i % 16 == 0:
                    await k_writer.drain()
            return await asyncio.wait_for(k_reader.readexactly(len(typed)), 30)

        async def send_bulk() -> bytes:
            b_writer.write(bulk)
            return await asyncio.wait_for(b_reader.readexactly(len(bulk)), 60)

        keys_back, bulk_back = await asyncio.gather(type_keys(), send_bulk())
        assert keys_back == typed
        assert bulk_back == bulk
        k_writer.close()
        b_writer.close()


async def _cat(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """An instrument command that echoes what it is sent, until end of input."""
    while data := await process.stdin.read(65536):
        process.stdout.write(data)
        await process.stdout.drain()
    process.exit(0)


async def test_the_broker_ssh_connection_through_a_tunnel_joins_its_writes_per_loop_pass(
    tmp_path: Path,
) -> None:
    """The broker's own SSH connection to the instrument (the protocol break) writes
    into its tunnel channel once per loop pass; keystrokes and bulk still arrive whole."""
    async with ssh_instrument(_cat, encoding=None) as ssh_port, lab(tmp_path) as L:
        L.allow_port(ssh_port)
        await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        tunnel = L.listener.registry.tunnel(GATEWAY_ID, "s-cat", "yamada")
        assert tunnel is not None
        async with asyncssh.connect(
            "cobas-c503-1",
            ssh_port,
            tunnel=tunnel,
            known_hosts=None,
            username="service",
            config=None,
        ) as conn:
            # asyncssh member SSHConnection._transport: here the tunnel channel, wrapped
            assert isinstance(getattr(conn, "_transport", None), CoalescingTransport)
            proc = await conn.create_process(encoding=None)
            for key_byte in b"status --all\r":  # typed, each key's echo awaited
                proc.stdin.write(bytes((key_byte,)))
                echoed = await asyncio.wait_for(proc.stdout.readexactly(1), 10)
                assert echoed == bytes((key_byte,))
            bulk = os.urandom(2 * 1024 * 1024)
            proc.stdin.write(bulk)
            proc.stdin.write_eof()
            back = await asyncio.wait_for(proc.stdout.readexactly(len(bulk)), 60)
            assert back == bulk
            await asyncio.wait_for(proc.wait(), 10)
