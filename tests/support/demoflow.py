"""The steps many end-to-end tests start with on a running demo (or cluster): people
sign in with the CLI, an engineer asks for an instrument and an approver approves.

``Totp`` gives codes as an authenticator app does, each step used once."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import pyotp

from hoshu_demo.demo import Demo

MARGIN_S = 15  # a code handed out is still good at least this long


class Totp:
    """Codes as an authenticator app gives them; each step is used once (the broker
    refuses replays), so a second code in one step waits for the clock to move on."""

    def __init__(self, secret: str, used_before: float) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last = int(used_before) // 30  # the demo used a code at or before this step

    def code(self) -> str:
        deadline = time.monotonic() + 70
        while True:
            t = time.time()
            now = int(t) // 30
            step = max(self.last + 1, now - 1)
            if step == now - 1 and t % 30 > 30 - MARGIN_S:
                # the broker takes the last step only until this one ends: too soon for a
                # code that a slow CLI and a busy machine still have to carry there
                step = now
            if step <= now + 1:
                self.last = step
                return self.totp.at(step * 30)
            assert time.monotonic() < deadline, "clock did not move"
            time.sleep(0.5)  # waiting for wall-clock time itself, not for a condition


def sign_in(
    d: Demo, users: Iterable[str], *, passwords: Mapping[str, str] | None = None
) -> dict[str, Totp]:
    """Each of ``users`` signs in with ``hoshu login`` (password on stdin and a TOTP
    code; the demo's passwords unless ``passwords`` names them); returns their
    authenticators, for the codes they need next (every code up to now counts as used)."""
    names = tuple(users)
    started_at = time.time()
    codes = {u: Totp(d.secrets[u], started_at) for u in names}
    known = {u: p["password"] for u, p in d.describe()["users"].items()}
    known.update(passwords or {})
    for user in names:
        d.hoshu(
            user,
            "login",
            "--user",
            user,
            "--password-stdin",
            "--totp",
            codes[user].code(),
            stdin=known[user],
        )
    return codes


def request_approved(
    d: Demo,
    instrument: str,
    *,
    reason: str,
    ticket: str,
    plan: str,
    engineer: str = "tanaka",
    approver: str = "sato",
    duration: str = "1h",
) -> dict[str, Any]:
    """``engineer`` asks for ``instrument``'s SSH port and ``approver`` approves
    (both signed in); returns the request as ``hoshu request`` printed it."""
    port = d.describe()["instruments"][instrument]["ssh_port"]
    req: dict[str, Any] = d.hoshu(
        engineer,
        "request",
        instrument,
        "--port",
        str(port),
        "--duration",
        duration,
        "--reason",
        reason,
        "--ticket",
        ticket,
        "--plan",
        plan,
    )
    d.hoshu(approver, "approve", req["id"], "--comment", "ok")
    return req
