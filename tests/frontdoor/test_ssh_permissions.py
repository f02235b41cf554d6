"""Every SSH path asks the permission table, as every HTTP route does.

A person who holds a registered key, a TOTP secret and a live grant, but whose
roles no longer allow an SSH path (``ssh.session``, ``ssh.files``,
``ssh.forward`` in ``broker.access.permissions``), gets none of them: not a
shell through stock ``ssh``, not SFTP, not a forward, each refused with the
reason and an event.  The same person with the engineer role gets all three.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import paramiko
import pytest

from broker.access.permissions import PERMISSIONS, SSH_ACTIONS, role_allows
from tests.frontdoor.harness import World, paramiko_client, run


def _with_roles(w: World, roles: frozenset[str]) -> None:
    eng, key, secret, active = w.policy.engineers[w.engineer.username]
    w.policy.engineers[w.engineer.username] = (replace(eng, roles=roles), key, secret, active)


def _grant_all(w: World, port: int) -> None:
    t = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(t, ports=(*t.ports, port))
    w.policy.grant(
        w.engineer,
        w.instrument,
        (w.ssh_port, port),
        ends=w.clock.now + timedelta(hours=1),
        files=True,
    )


def _try_files_and_forward(w: World, port: int) -> tuple[str, str]:
    """SFTP and a forward on one paramiko connection: 'ok' or why it failed."""
    t = paramiko_client(w)
    try:
        try:
            sftp = paramiko.SFTPClient.from_transport(t)
            assert sftp is not None
            sftp.listdir(".")
            sftp.close()
            files = "ok"
        except (paramiko.SSHException, OSError, EOFError) as exc:
            files = f"refused: {exc}"
        try:
            chan = t.open_channel("direct-tcpip", (w.instrument, port), ("127.0.0.1", 5555), 10)
            chan.settimeout(10)
            chan.sendall(b"ping")
            forward = "ok" if chan.recv(4) == b"ping" else "no echo"
            chan.close()
        except paramiko.ChannelException as exc:
            forward = f"refused: {exc}"
    finally:
        t.close()
    return files, forward


async def test_an_account_without_the_engineer_role_gets_no_ssh_path(
    world: World, echo_port: int
) -> None:
    w = world
    _grant_all(w, echo_port)
    _with_roles(w, frozenset({"auditor"}))
    r = await run(w.ssh_argv(extra=(w.login(), "echo hello")), w.env())
    assert r.rc == 1 and b"hello" not in r.out
    assert b"roles do not allow ssh.session" in r.err
    w.clock.advance(30)  # a fresh TOTP code for the next login
    files, forward = await asyncio.to_thread(_try_files_and_forward, w, echo_port)
    assert files.startswith("refused") and forward.startswith("refused"), (files, forward)
    refused = {
        kind: [e.get("EventResultDetails") for e in w.events.of_type(kind)]
        for kind in ("session.refused", "file.refused", "forward.refused")
    }
    assert refused == {
        "session.refused": ["role"],
        "file.refused": ["role"],
        "forward.refused": ["role"],
    }
    assert not w.events.of_type("session.started")

    # the same person, the same grant, with the engineer role: every path opens
    _with_roles(w, frozenset({"engineer"}))
    w.clock.advance(30)
    r = await run(w.ssh_argv(extra=(w.login(), "echo hello")), w.env())
    assert r.rc == 0 and b"hello" in r.out, r.err
    w.clock.advance(30)
    assert await asyncio.to_thread(_try_files_and_forward, w, echo_port) == ("ok", "ok")


@pytest.mark.parametrize("action", sorted(SSH_ACTIONS))
def test_the_ssh_paths_are_rows_of_the_one_table(action: str) -> None:
    """Engineers only, from any organisation kind the table names; no one else."""
    assert action in PERMISSIONS
    assert role_allows({"engineer"}, action, "vendor")
    for role in ("approver", "hospital_admin", "auditor", "platform_admin"):
        assert not role_allows({role}, action, "hospital")
