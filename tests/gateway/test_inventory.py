"""Inventory: reachability and the SSH host key fingerprint of each instrument."""

from __future__ import annotations

import asyncio

import asyncssh

from gateway.config import Instrument
from gateway.inventory import probe
from tests.support import free_port


async def test_inventory_reports_reachability_and_ssh_host_key_fingerprints() -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[host_key])
    ssh_port = server.sockets[0].getsockname()[1]
    try:
        items = await probe(
            (
                Instrument("cobas-c503-1", "127.0.0.1", (ssh_port,), "ssh", "chemistry", "c503"),
                Instrument("las-line-a", "127.0.0.1", (free_port(),), "vnc"),
                Instrument("lis-server", "127.0.0.1", (free_port(),), "ssh"),
            ),
            wait_s=2,
        )
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
    by_name = {i.name: i for i in items}
    assert by_name["cobas-c503-1"].reachable
    assert by_name["cobas-c503-1"].host_key_fingerprint == host_key.get_fingerprint()
    assert by_name["cobas-c503-1"].department == "chemistry"
    assert not by_name["las-line-a"].reachable
    assert by_name["las-line-a"].host_key_fingerprint is None
    assert not by_name["lis-server"].reachable
