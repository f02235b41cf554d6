"""Against the simulated laboratory's real OpenSSH instrument."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh

from gateway.config import Instrument
from gateway.inventory import probe
from labsim.sshd import OpenSSHInstrument
from tests.gateway.harness import GATEWAY_ID, lab
from tests.support import poll

NAME = "analyzer-pc"  # the hospital's own name for it (the harness lists cobas-c503-1)


async def test_inventory_and_a_session_through_the_tunnel_reach_a_real_sshd(
    tmp_path: Path, openssh_instrument: OpenSSHInstrument
) -> None:
    inst = openssh_instrument.info
    [item] = await probe((Instrument(inst.name, inst.host, inst.ports, "ssh"),), wait_s=3)
    assert item.reachable
    assert item.host_key_fingerprint == openssh_instrument.host_key_fingerprint

    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw") as L:
        text = L.config_path.read_text()
        L.config_path.write_text(
            text + "\n[[instrument]]\n"
            f'name = "{NAME}"\nhost = "{inst.host}"\n'
            f'ports = [{inst.ports[0]}]\nprotocol = "ssh"\n'
        )
        await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        tunnel = L.listener.registry.tunnel(GATEWAY_ID, "s-1", "kato")
        assert tunnel is not None
        await poll(
            lambda: any(
                i.name == NAME and i.host_key_fingerprint == openssh_instrument.host_key_fingerprint
                for i in L.directory.inventory.get(GATEWAY_ID, [])
            ),
            what="fingerprint reported to the broker",
        )
        creds = inst.credentials
        assert creds is not None, f"{NAME} has no injected credentials"
        known = asyncssh.import_known_hosts(
            openssh_instrument.known_hosts_line().replace(f"[{inst.host}]", f"[{NAME}]")
        )
        async with asyncssh.connect(
            NAME,
            inst.ports[0],
            tunnel=tunnel,
            known_hosts=known,
            config=None,
            username=creds.username,
            client_keys=[str(creds.private_key_path)],
        ) as conn:
            result = await asyncio.wait_for(conn.run("echo through-the-gateway"), 10)
        assert isinstance(result.stdout, str) and result.stdout.strip() == "through-the-gateway"
        await poll(lambda: bool(L.emitter.of_type("gateway.channel_closed")))
        assert L.emitter.of_type("gateway.channel_opened")[0].get("ActorUsername") == "kato"
