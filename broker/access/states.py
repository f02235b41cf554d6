"""Closed state machines for requests and grants.

Requests: ``pending → approved | denied | expired | cancelled``; every other
state is final.  Grants: ``approved → active | revoked | expired``,
``active → ended | revoked | expired``.  Anything not in a table raises
:class:`IllegalTransition`; no code assigns ``status`` without going through
:func:`check`.
"""

from __future__ import annotations

from broker.access.errors import IllegalTransition
from broker.access.model import GrantStatus, RequestStatus

R, G = RequestStatus, GrantStatus

REQUEST_TRANSITIONS: dict[str, frozenset[str]] = {
    R.PENDING: frozenset({R.APPROVED, R.DENIED, R.EXPIRED, R.CANCELLED}),
    R.APPROVED: frozenset(),
    R.DENIED: frozenset(),
    R.EXPIRED: frozenset(),
    R.CANCELLED: frozenset(),
}

GRANT_TRANSITIONS: dict[str, frozenset[str]] = {
    G.APPROVED: frozenset({G.ACTIVE, G.REVOKED, G.EXPIRED}),
    G.ACTIVE: frozenset({G.ENDED, G.REVOKED, G.EXPIRED}),
    G.ENDED: frozenset(),
    G.REVOKED: frozenset(),
    G.EXPIRED: frozenset(),
}

_TABLES = {"request": REQUEST_TRANSITIONS, "grant": GRANT_TRANSITIONS}


def check(kind: str, current: str, target: str) -> None:
    """Raise :class:`IllegalTransition` unless ``current → target`` is allowed."""
    table = _TABLES[kind]
    if current not in table:
        raise IllegalTransition(f"{kind} is in unknown state {current!r}")
    if target not in table[current]:
        raise IllegalTransition(f"a {current} {kind} cannot become {target}")


def is_final(kind: str, state: str) -> bool:
    return not _TABLES[kind].get(state)
