"""A held command waits for an approver of the hospital: allowed, refused, timed out.

Stock ssh through the broker to the lab's sshd; the approver answers with the real
``hoshu holds`` CLI over HTTP to the broker's holds routes.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request

from bench import commands_corpus as corpus
from broker.access.errors import Unauthenticated
from broker.access.ports import Actor
from broker.api import errors
from broker.api.routes.holds import build_holds_router
from broker.frontdoor.channels import Channels
from tests.commands.terminal import SshTerminal, with_rules
from tests.frontdoor.harness import World
from tests.support import free_port, poll

HOSHU = str(Path(sys.executable).with_name("hoshu"))


def people(w: World) -> dict[str, Actor]:
    eng = w.engineer
    return {
        "appr-h1": Actor("u1", "yamada", "h-1", "hospital", frozenset({"approver"})),
        "appr-h2": Actor("u2", "ito", "h-2", "hospital", frozenset({"approver"})),
        "aud-h1": Actor("u3", "kato", "h-1", "hospital", frozenset({"auditor"})),
        "admin-h1": Actor("u4", "admin", "h-1", "hospital", frozenset({"hospital_admin"})),
        "root": Actor("u5", "root", "p", "platform", frozenset({"platform_admin"})),
        "engineer": Actor(eng.user_id, eng.username, "v-1", "vendor", frozenset({"engineer"})),
        "appr-h1-read": Actor(
            "u6", "ro", "h-1", "hospital", frozenset({"approver"}), frozenset({"read"})
        ),
    }


@pytest.fixture
async def api(granted: World) -> AsyncIterator[str]:
    who = people(granted)

    def authenticate(request: Request) -> Actor:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in who:
            raise Unauthenticated("invalid token")
        return who[token]

    app = FastAPI()
    errors.install(app)
    app.include_router(
        build_holds_router(lambda: granted.door.sessions, granted.events, authenticate=authenticate)
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.ensure_future(server.serve())
    await poll(lambda: server.started, 10, "the API to listen")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def hoshu(api: str, token: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "HOSHU_TOKEN": token, "HOSHU_API": api}
    proc = await asyncio.create_subprocess_exec(
        HOSHU,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


RULES = ({"action": "hold", "pattern": r"\btouch\s+held-", "reason": "a test hold"},)


async def _held_id(term: SshTerminal) -> str:
    await asyncio.to_thread(term.wait, r"hold h-[0-9a-f]+, at most")
    found: list[bytes] = re.findall(
        rb"hold (h-[0-9a-f]+), at most", b"".join(d for k, d in term.capture.chunks if k == "o")
    )
    return found[-1].decode()


@pytest.mark.slow
async def test_a_held_command_runs_only_once_the_hospitals_approver_allows_it(
    granted: World, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = granted
    with_rules(w, RULES)
    term = SshTerminal(w)
    try:
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"touch held-one\r")
        hold = await _held_id(term)
        rc, out = await hoshu(api, "appr-h1", "--json", "holds")
        assert rc == 0 and hold in out and "touch held-one" in out
        # the forgotten paths: none of these may let it through, and it keeps waiting
        for token in ("engineer", "appr-h2", "aud-h1", "admin-h1", "root", "appr-h1-read"):
            rc, out = await hoshu(api, token, "holds", "allow", hold)
            assert rc == 1 and re.search(r"not allow|only an approver|scope|decisions", out), (
                token,
                out,
            )
        rc, out = await hoshu(api, "appr-h1", "--json", "holds")
        assert hold in out  # still waiting
        assert not (w.data_dir / "held-one").exists()
        assert w.events.of_type("session.command_released") == []
        rc, out = await hoshu(api, "appr-h1", "holds", "allow", hold)
        assert rc == 0 and "allowed" in out, out
        await asyncio.to_thread(term.wait, "allowed by yamada; sent")
        await poll(lambda: (w.data_dir / "held-one").exists(), 10, "the held command to run")
        rc, out = await hoshu(api, "appr-h1", "holds", "refuse", hold)
        assert rc == 1  # answered already: no longer waiting
        await asyncio.to_thread(term.wait, corpus.PROMPT)

        term.send(b"touch held-two\r")
        hold2 = await _held_id(term)
        rc, out = await hoshu(api, "appr-h1", "holds", "refuse", hold2)
        assert rc == 0, out
        await asyncio.to_thread(term.wait, "refused by yamada; the command was not sent")
        await asyncio.to_thread(term.wait, corpus.PROMPT)

        monkeypatch.setattr(Channels, "hold_timeout_s", 1.0)
        term.send(b"touch held-three\r")
        await _held_id(term)
        await asyncio.to_thread(term.wait, "no answer in time; the command was not sent")
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"echo after-$((2*3))\r")
        await asyncio.to_thread(term.wait, "after-6")
        term.send(b"exit\r")
        await asyncio.to_thread(term.finish)
    finally:
        await asyncio.to_thread(term.close)
    await poll(lambda: bool(w.events.of_type("session.ended")), 10)
    assert not (w.data_dir / "held-two").exists() and not (w.data_dir / "held-three").exists()
    held = w.events.of_type("session.command_held")
    assert [e.details["command"] for e in held] == [
        "touch held-one",
        "touch held-two",
        "touch held-three",
    ]
    released = w.events.of_type("session.command_released")
    assert [(e.details["decision"], e.details.get("by")) for e in released] == [
        ("allowed", "yamada"),
        ("refused", "yamada"),
        ("timed_out", None),
    ]
    ran = [
        e.details["command"]
        for e in w.events.of_type("session.command")
        if e.details.get("source") == "shell"
    ]
    assert "touch held-one" in ran and "touch held-two" not in ran and "touch held-three" not in ran
    (w.data_dir / "held-one").unlink()
