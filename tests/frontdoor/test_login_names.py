"""The SSH front door refuses login names outside the one name definition (paramiko).

A name with a trailing newline, a leading '-' or a Unicode look-alike never
reaches the access policy: the engineer's real key gets nowhere with it, and
the attempt is an ``ssh.login`` failure (saying the name is malformed, or, for a
control character that the SSH layer refuses before, that nothing was proven).
"""

from __future__ import annotations

import asyncio

import paramiko
import pytest

from tests.frontdoor.harness import World
from tests.support import poll


def try_key(w: World, login: str) -> None:
    t = paramiko.Transport(("127.0.0.1", w.door.port))
    t.banner_timeout = 10
    try:
        t.start_client(timeout=10)
        key = paramiko.Ed25519Key.from_private_key_file(str(w.key_path))
        t.auth_publickey(login, key)
    finally:
        t.close()


@pytest.mark.parametrize(
    "login",
    [
        "alice\n+{inst}",
        "alice+{inst}\n",
        "alice+-{inst}",
        "\u0430lice+{inst}",
        "alice+{inst}\u200b",
        "Alice+{inst}",
        "-alice+{inst}",
    ],
)
async def test_malformed_login_names_are_refused_with_the_real_key(
    granted: World, login: str
) -> None:
    w = granted
    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(try_key, w, login.format(inst=w.instrument))

    def refused() -> bool:
        return bool(w.events.of_type("ssh.login"))

    await poll(refused, deadline_s=5.0)
    logins = w.events.of_type("ssh.login")
    assert all(e.get("EventResult") == "Failure" for e in logins)
    # a control character is refused by the SSH layer itself (SASLprep) before the name
    # check; everything else by the name check
    expected = {"no credentials offered"} if "\n" in login else {"malformed login name"}
    assert {e.get("EventResultDetails") for e in logins} == expected
    assert not w.events.of_type("session.started")
