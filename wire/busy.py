"""The broker's "busy, retry in N s" answer to a gateway it cannot log in now.

A broker that already runs as many tunnel logins as it allows (or holds as many
connections as its descriptors allow) does not start the SSH key exchange of
another: it sends its version line and an SSH ``DISCONNECT`` with reason code
:data:`BUSY_DISCONNECT_CODE` (RFC 4253 ``SSH_DISCONNECT_TOO_MANY_CONNECTIONS``)
whose description is :func:`busy_reason`, and closes.  The gateway reads the
wait from it (:func:`busy_retry_s`), bounded to :data:`MAX_BUSY_RETRY_S`, and
dials again after a jittered delay around it.  A gateway that does not know
this answer sees an ordinary disconnect and backs off as after any failure.
"""

from __future__ import annotations

import math
import re

BUSY_DISCONNECT_CODE = 12
"""SSH_DISCONNECT_TOO_MANY_CONNECTIONS (RFC 4253 section 11.1)."""

MAX_BUSY_RETRY_S = 300.0
"""The longest wait a gateway takes from a busy answer (a larger one is cut to it)."""

MIN_BUSY_RETRY_S = 1.0
"""The shortest: a broker saying "retry in 0 s" must not cause a tight redial."""

_RETRY = re.compile(r"\bretry in (\d{1,6}) s\b")


def busy_reason(retry_s: float) -> str:
    """The description of the busy disconnect: whole seconds, rounded up."""
    wait = min(MAX_BUSY_RETRY_S, max(MIN_BUSY_RETRY_S, retry_s))
    return f"broker busy: retry in {math.ceil(wait)} s"


def busy_retry_s(code: int, reason: str) -> float | None:
    """The wait a busy disconnect asks for, within ``[MIN, MAX]_BUSY_RETRY_S``; None
    when ``code``/``reason`` are not a busy answer (another disconnect)."""
    if code != BUSY_DISCONNECT_CODE:
        return None
    found = _RETRY.search(reason[:256])
    if found is None:
        return None
    return min(MAX_BUSY_RETRY_S, max(MIN_BUSY_RETRY_S, float(found.group(1))))


__all__ = [
    "BUSY_DISCONNECT_CODE",
    "MAX_BUSY_RETRY_S",
    "MIN_BUSY_RETRY_S",
    "busy_reason",
    "busy_retry_s",
]
