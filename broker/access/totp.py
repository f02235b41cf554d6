"""TOTP (RFC 6238): a code is accepted once, inside one step either side.

The caller stores the last accepted time step per user; a code for that step
or an earlier one is refused as a replay.
"""

from __future__ import annotations

import hmac
from datetime import datetime

import pyotp

STEP_S = 30
DIGITS = 6
ISSUER = "hoshu"


def new_secret() -> str:
    return str(pyotp.random_base32())


def provisioning_uri(secret: str, username: str, issuer: str = ISSUER) -> str:
    return str(
        pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(
            name=username, issuer_name=issuer
        )
    )


def code_at(secret: str, at: datetime) -> str:
    return str(pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).at(at))


def verify(secret: str, code: str, now: datetime, last_step: int) -> int | None:
    """Return the matched time step (> ``last_step``) or None when the code is refused."""
    code = code.strip()
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    step_now = int(now.timestamp()) // STEP_S
    for step in (step_now, step_now - 1, step_now + 1):
        if step <= last_step:
            continue
        if hmac.compare_digest(str(totp.generate_otp(step)), code):
            return step
    return None


def is_replay(secret: str, code: str, now: datetime, last_step: int) -> bool:
    """True when ``code`` is valid but its step was already used."""
    return (
        verify(secret, code, now, -1) is not None and verify(secret, code, now, last_step) is None
    )
