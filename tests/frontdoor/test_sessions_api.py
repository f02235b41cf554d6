"""Live sessions over HTTP: approvers of the hospital follow and terminate; others cannot."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request

from broker.api import errors
from broker.api.routes.sessions import build_sessions_router
from tests.frontdoor.harness import World, open_shell, paramiko_client, shell_ready
from tests.support import poll


@dataclass(frozen=True)
class Who:
    user_id: str
    username: str
    org_id: str
    org_kind: str
    roles: frozenset[str]
    scopes: frozenset[str] = frozenset({"*"})
    token_kind: str = "session"


PEOPLE = {
    "hanako": Who("u-hanako", "hanako", "h-1", "hospital", frozenset({"approver"})),
    "other": Who("u-other", "other", "h-2", "hospital", frozenset({"approver"})),
    "aud": Who("u-aud", "aud", "h-1", "hospital", frozenset({"auditor"})),
    "alice": Who("u-alice", "alice", "v-1", "vendor", frozenset({"engineer"})),
}


def _app(w: World) -> FastAPI:
    def authenticate(request: Request) -> Who:
        return PEOPLE[request.headers["x-test-user"]]

    app = FastAPI()
    errors.install(app)
    app.include_router(
        build_sessions_router(lambda: w.door.sessions, w.events, authenticate=authenticate)
    )
    return app


async def test_approver_lists_follows_and_terminates(granted: World) -> None:
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    transport = httpx.ASGITransport(app=_app(w))
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as http:

        async def get(path: str, who: str) -> httpx.Response:
            return await http.get(path, headers={"x-test-user": who})

        (row,) = (await get("/v1/sessions", "hanako")).json()["sessions"]
        assert (row["user"], row["instrument"]) == ("alice", "cobas-c503-1")
        assert (await get("/v1/sessions", "other")).json()["sessions"] == []
        assert len((await get("/v1/sessions", "alice")).json()["sessions"]) == 1
        sid = row["session_id"]
        r = await get(f"/v1/sessions/{sid}/stream", "aud")
        assert r.status_code == 403
        assert (await get(f"/v1/sessions/{sid}/stream", "other")).status_code == 404
        r = await http.post(f"/v1/sessions/{sid}/terminate", headers={"x-test-user": "alice"})
        assert r.status_code == 403

        follow = asyncio.ensure_future(get(f"/v1/sessions/{sid}/stream", "hanako"))
        await poll(lambda: bool(w.events.of_type("recording.viewed")))
        await poll(lambda: bool(w.door.sessions.list()[0].followers))
        chan.send(b"echo seen-by-$((2*3))\n")
        await asyncio.to_thread(shell_ready, chan)
        r = await http.post(f"/v1/sessions/{sid}/terminate", headers={"x-test-user": "hanako"})
        assert r.json() == {"session_id": sid, "terminated": True}
        streamed = await asyncio.wait_for(follow, 10)
        assert b"seen-by-6" in streamed.content
    await poll(chan.exit_status_ready, deadline_s=3)
    t.close()
    assert w.events.of_type("session.terminated")[0].details["by"] == "hanako"
    assert w.events.of_type("recording.refused")[0].get("ActorUsername") == "aud"
