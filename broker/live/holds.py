"""Shell command lines held until a hospital approver allows or refuses them.

When a line matches a ``hold`` rule of the hospital (:mod:`broker.live.commands`),
the relay keeps its Enter and opens a :class:`HeldCommand` on the live session
(:attr:`broker.live.sessions.LiveSession.hold`); an approver of the session's
hospital decides through ``POST /v1/holds/{id}/allow`` or ``/refuse``
(:mod:`broker.api.routes.holds`, ``hoshu holds``).  No answer before the
deadline counts as a refusal.  One line is held at a time per session: the
engineer's keys wait with it.

With several replicas (PostgreSQL) the hold has a ``board``
(:class:`broker.live.clusterholds.ClusterHolds`): :meth:`HeldCommand.wait` then writes
the line into the database, so any replica lists and answers it, and this replica (the
owner) learns the answer from there; the owner alone decides that time ran out.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

ALLOWED = "allowed"
REFUSED = "refused"
TIMED_OUT = "timed_out"
ENDED = "session_ended"


class SharedHolds(Protocol):
    """Where a held line is shared with the other replicas (the owner's side)."""

    async def wait(self, hold: HeldCommand, timeout_s: float) -> tuple[str, str]: ...


@dataclass
class HeldCommand:
    session_id: str
    instrument: str
    hospital_id: str
    username: str
    command: str
    reason: str
    pattern: str
    held_at: datetime
    deadline: datetime
    hold_id: str = field(default_factory=lambda: "h-" + secrets.token_hex(8))
    user_id: str = ""  # the engineer's (who may see the hold)
    board: SharedHolds | None = field(default=None, repr=False)
    decision: asyncio.Future[tuple[str, str]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future(), repr=False
    )

    @property
    def pending(self) -> bool:
        return not self.decision.done()

    def decide(self, decision: str, by: str) -> bool:
        """Record the answer (ALLOWED or REFUSED) by ``by``; False when already decided."""
        if self.decision.done():
            return False
        self.decision.set_result((decision, by))
        return True

    async def wait(self, timeout_s: float) -> tuple[str, str]:
        """The answer (decision, by) once given, or (TIMED_OUT, "") after ``timeout_s``."""
        if self.board is not None:
            return await self.board.wait(self, timeout_s)
        try:
            return await asyncio.wait_for(asyncio.shield(self.decision), timeout_s)
        except TimeoutError:
            return TIMED_OUT, ""

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.hold_id,
            "session_id": self.session_id,
            "instrument": self.instrument,
            "hospital_id": self.hospital_id,
            "engineer": self.username,
            "command": self.command,
            "reason": self.reason,
            "held_at": self.held_at.isoformat(),
            "deadline": self.deadline.isoformat(),
        }
