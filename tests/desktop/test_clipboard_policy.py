"""The hospital's clipboard switch, from its policy to a real Xvnc session.

Off by default: text the engineer's browser puts on the clipboard (ClientCutText) is
dropped and written as ``file.refused`` (``clipboard_off``, size and SHA-256).  The
hospital's admin switches it on with ``PATCH /v1/policies`` (an ``admin.change``); the
next session relays the same text to the instrument and writes ``file.transferred`` with
its size and SHA-256.  An engineer's attempt to switch it on is refused and changes
nothing.  The gate reads the switch through the same store lookup the broker wires in
(:meth:`broker.store.directory.StoreAccessPolicy.clipboard_allowed`).
"""

from __future__ import annotations

import hashlib
import struct

import httpx

from audit.events import AuditEvent
from broker.access.model import User
from broker.store.directory import StoreAccessPolicy
from tests.control.apihelp import auth, session_token
from tests.desktop.conftest import Desk
from tests.desktop.helpers import console_sign_in, ws_path
from tests.desktop.wsclient import ws_open
from tests.support import poll
from tests.support.served import served

TEXT = b"lot-4711 calibration"


def _user(d: Desk, name: str) -> User:
    with d.s.ctx.uow() as tx:
        user = tx.one(User, name=name)
    assert user is not None
    return user


async def _copy_in(d: Desk, url: str, http: httpx.AsyncClient, expect: str) -> AuditEvent:
    """One desktop session in which the browser sends ``TEXT`` as clipboard text."""
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    await ws.rfb_handshake()
    await ws.send(struct.pack(">BxxxI", 6, len(TEXT)) + TEXT)  # ClientCutText
    await poll(lambda: bool(d.events.of_type(expect)), 5, expect)
    ws.close()
    await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")
    [event] = d.events.of_type(expect)
    return event


async def test_clipboard_is_refused_until_the_hospital_switches_it_on(desk: Desk) -> None:
    d = desk
    d.gate.clipboard_allowed = StoreAccessPolicy(d.s).clipboard_allowed  # as build_broker does
    d.grant()
    sha = hashlib.sha256(TEXT).hexdigest()
    hadmin = auth(session_token(d.s, _user(d, "hadmin")))
    eng = auth(session_token(d.s, _user(d, "alice")))
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        shown = await http.get("/v1/policies/hoshi-hospital", headers=hadmin)
        assert shown.status_code == 200 and shown.json()["clipboard_allowed"] is False

        refused = await _copy_in(d, url, http, "file.refused")
        assert refused.get("EventResultDetails") == "clipboard_off"
        assert refused.get("TargetFileSize") == len(TEXT)
        assert refused.get("TargetFileSHA256") == sha
        assert not d.events.of_type("file.transferred")

        # the engineer cannot switch it on for themselves
        r = await http.patch(
            "/v1/policies/hoshi-hospital", headers=eng, json={"clipboard_allowed": True}
        )
        assert r.status_code in (403, 404), r.text
        assert (
            StoreAccessPolicy(d.s).clipboard_allowed(
                d.s.estate.show_policy(d.actor("hadmin"), "hoshi-hospital").hospital_id
            )
            is False
        )

        d.events.clear()
        r = await http.patch(
            "/v1/policies/hoshi-hospital", headers=hadmin, json={"clipboard_allowed": True}
        )
        assert r.status_code == 200 and r.json()["clipboard_allowed"] is True, r.text
        [change] = d.events.of_type("admin.change")
        assert change.details["changes"] == {"clipboard_allowed": True}

        d.events.clear()
        moved = await _copy_in(d, url, http, "file.transferred")
        assert moved.get("TargetFileSize") == len(TEXT)
        assert moved.get("TargetFileSHA256") == sha
        assert moved.details["tool"] == "clipboard"
        assert not d.events.of_type("file.refused")
