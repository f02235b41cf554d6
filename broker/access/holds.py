"""Answering a held shell line: one rule for the API and the console.

A line matching a ``hold`` rule waits in its live session (``broker.live.holds``)
until an approver answers or its deadline passes.  Both ``POST /v1/holds/{id}/…``
(:mod:`broker.api.routes.holds`) and the console's Allow and Refuse
(:mod:`broker.console.holds`) answer through :func:`answer`, after the permission
table has allowed ``commands.release``: the hold must be waiting (else
:class:`NotFound`), the caller must be of the session's hospital (else
:class:`PermissionDenied`: an approver of another hospital, the engineer, an auditor
or a platform admin), and the first answer wins (else :class:`Conflict`).

With several replicas the held lines are rows in the database (a :class:`HoldBoard`,
``broker.live.clusterholds``): the same rule answers them, and the first answer is a
conditional update of the row, so it wins on every replica; a line answered or past
its deadline is still found a few minutes and answering it is a :class:`Conflict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from broker.access.errors import Conflict, NotFound, PermissionDenied
from broker.access.model import OrgKind
from broker.access.permissions import Principal

ALLOWED, REFUSED = "allowed", "refused"
DECISIONS = frozenset({ALLOWED, REFUSED})


class Held(Protocol):
    """A held line (``broker.live.holds.HeldCommand``), as answering uses it."""

    hold_id: str
    session_id: str
    instrument: str
    hospital_id: str
    username: str
    command: str
    reason: str
    held_at: datetime
    deadline: datetime

    @property
    def pending(self) -> bool: ...

    def decide(self, decision: str, by: str) -> bool: ...

    def summary(self) -> dict[str, Any]: ...


class SharedHeld(Held, Protocol):
    """A held line of the cluster (a database row), as any replica lists and answers it."""

    user_id: str
    replica_id: str


class HoldBoard(Protocol):
    """The cluster's held lines (blocking: call on a thread, never on the event loop)."""

    def waiting(self) -> Sequence[SharedHeld]:
        """The lines waiting for an answer on any replica, oldest first."""
        ...

    def lookup(self, hold_id: str) -> Sequence[SharedHeld]:
        """The line ``hold_id`` (waiting, or answered a short while ago), or nothing."""
        ...


def waiting(sessions: Iterable[object]) -> list[Held]:
    """The lines waiting in these live sessions (any object with a ``hold``)."""
    out: list[Held] = []
    for s in sessions:
        hold: Held | None = getattr(s, "hold", None)
        if hold is not None and hold.pending:
            out.append(hold)
    return out


def may_answer(caller: Principal, hold: Held) -> bool:
    """Only staff of the session's hospital answer its held lines."""
    return caller.org_kind == OrgKind.HOSPITAL and caller.org_id == hold.hospital_id


def answer(
    holds: Iterable[Held],
    hold_id: str,
    decision: str,
    caller: Principal,
    *,
    found: Callable[[Held], None] = lambda _h: None,
) -> Held:
    """Answer ``hold_id`` with ``decision`` as ``caller``; ``found`` is told of the hold
    before the caller is judged (so a refusal event can name it)."""
    if decision not in DECISIONS:
        raise ValueError(f"a hold is {ALLOWED} or {REFUSED}, not {decision!r}")
    hold = next((h for h in holds if h.hold_id == hold_id), None)
    if hold is None:
        raise NotFound(f"no command waiting as {hold_id}")
    found(hold)
    if not may_answer(caller, hold):
        raise PermissionDenied("only an approver of the session's hospital may answer")
    if not hold.decide(decision, caller.username):
        raise Conflict(f"{hold_id} was answered already")
    return hold
