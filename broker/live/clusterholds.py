"""Held shell command lines shared by the replicas through PostgreSQL.

Behind one address an approver's console or CLI lands on any replica, while the line
waits in the live session of the replica that runs it (the *owner*,
:mod:`broker.live.holds`).  With several replicas each held line is therefore a row of
:data:`broker.store.tables.COMMAND_HOLDS`:

* **held**: the owner writes the row (``waiting``) as the line is held, then waits;
* **listed**: every replica's ``GET /v1/holds``, ``hoshu holds`` and ``/console/holds``
  read the waiting rows (:meth:`ClusterHolds.waiting`), with the same visibility rule
  as before (:mod:`broker.api.routes.holds`);
* **answered**: any replica answers through :func:`broker.access.holds.answer` (same
  permission rule); the answer is a conditional update ``waiting`` → ``allowed`` or
  ``refused`` while the deadline has not passed, so the first answer wins on every
  replica and a second one is a conflict (409).  The same transaction bumps the change
  feed (:func:`broker.store.db.bump_version`, kind ``hold``): its NOTIFY wakes the
  owner, which reads the row and lets the line through (or erases it) and writes
  ``session.command_released`` naming the approver.  The owner also re-reads its
  waiting rows every :data:`RECHECK_S`, in case a notification is lost;
* **timed out**: the owner alone decides, at the deadline, by the same conditional
  update (``waiting`` → ``timed_out``): if an answer reached the row first, that
  answer stands; otherwise the line is refused and a later answer gets 409;
* **gone**: a session that ends while its line waits marks it ``session_ended``; the
  rows of a replica that stopped beating are marked so by a survivor (never by a
  replica that does not beat itself), a restarted replica marks its own leftovers.
  An answered row is kept :data:`KEEP_S` (so a late answer is told it came too late,
  not that nothing is there), then deleted.

Writes of the owner run on one thread, in order; the answering replica's update runs
on the caller's thread (the routes call it off the event loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from broker.live.holds import ALLOWED, ENDED, REFUSED, TIMED_OUT, HeldCommand
from broker.store.db import bump_version
from broker.store.tables import COMMAND_HOLDS, REPLICAS

log = logging.getLogger(__name__)

WAITING = "waiting"
HOLD_CHANGE = "hold"  # the change feed's kind for an answered line
RECHECK_S = 1.0  # the owner re-reads a waiting line's row this often (a lost NOTIFY)
SWEEP_S = 5.0
KEEP_S = 300.0  # an answered, timed-out or ended row stays this long, then goes
MAX_LISTED = 1000
Change = tuple[str, str]


class Feed(Protocol):
    """The change feed (:class:`broker.live.changes.ChangeFeed`), as holds use it."""

    def subscribe(self, listener: Callable[[list[Change] | None], None]) -> None: ...

    def unsubscribe(self, listener: Callable[[list[Change] | None], None]) -> None: ...


@dataclass
class ClusterHold:
    """A held line as a row (any replica's); :meth:`decide` answers it in the database."""

    hold_id: str
    session_id: str
    replica_id: str
    instrument: str
    hospital_id: str
    user_id: str
    username: str
    command: str
    reason: str
    held_at: datetime
    deadline: datetime
    state: str
    board: ClusterHolds

    @property
    def pending(self) -> bool:
        return self.state == WAITING

    def decide(self, decision: str, by: str) -> bool:
        """Blocking: the first answer wins (False: answered already or too late)."""
        return self.board.answer_row(self.hold_id, decision, by)

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
            "replica": self.replica_id,
        }


class ClusterHolds:
    """One replica's side of the cluster's held lines (see the module docstring)."""

    def __init__(
        self,
        engine: sa.Engine,
        replica_id: str,
        *,
        clock: Callable[[], datetime],
        feed: Feed | None = None,
        dead_after_s: float = 15.0,
        recheck_s: float = RECHECK_S,
        keep_s: float = KEEP_S,
    ) -> None:
        self.engine = engine
        self.replica_id = replica_id
        self._clock = clock
        self._feed = feed
        self._dead_after = timedelta(seconds=dead_after_s)
        self._recheck_s = recheck_s
        self._keep = timedelta(seconds=keep_s)
        self._local: dict[str, HeldCommand] = {}  # this replica's waiting lines
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hoshu-holds"
        )

    # --- the owner: a line of one of this replica's sessions ----------------------------

    async def wait(self, hold: HeldCommand, timeout_s: float) -> tuple[str, str]:
        """Share ``hold`` and wait for its answer, from this replica or any other."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        until = loop.time() + timeout_s
        self._local[hold.hold_id] = hold
        written = False
        try:
            while True:
                if not written:
                    try:
                        await loop.run_in_executor(self._writer, self._insert, hold)
                        written = True
                    except Exception as exc:  # not answerable meanwhile: tried again
                        log.error("held line %s not shared: %s", hold.hold_id, exc)
                left = until - loop.time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(
                        asyncio.shield(hold.decision), min(left, self._recheck_s)
                    )
                if written:
                    await self._check(hold)
            if hold.decision.done():
                return hold.decision.result()
            if not written:
                return TIMED_OUT, ""
            try:  # the owner decides: timed out, unless an answer reached the row first
                return await loop.run_in_executor(self._writer, self._time_out, hold.hold_id)
            except Exception as exc:  # fail closed: not sent (a late answer finds it too late)
                log.error("held line %s: timing out failed: %s", hold.hold_id, exc)
                return TIMED_OUT, ""
        except asyncio.CancelledError:  # the session ends while the line waits
            with contextlib.suppress(RuntimeError):
                self._writer.submit(self._finish, hold.hold_id, ENDED)
            raise
        finally:
            self._local.pop(hold.hold_id, None)

    def _insert(self, hold: HeldCommand) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(COMMAND_HOLDS).values(
                    hold_id=hold.hold_id,
                    session_id=hold.session_id,
                    replica_id=self.replica_id,
                    hospital_id=hold.hospital_id or "",
                    user_id=hold.user_id,
                    username=hold.username,
                    instrument=hold.instrument,
                    command=hold.command,
                    reason=hold.reason or "",
                    pattern=hold.pattern,
                    held_at=hold.held_at,
                    deadline=hold.deadline,
                    state=WAITING,
                )
            )

    def _time_out(self, hold_id: str) -> tuple[str, str]:
        """Blocking: ``waiting`` → ``timed_out``; else the answer that came first."""
        h = COMMAND_HOLDS.c
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(COMMAND_HOLDS)
                .where((h.hold_id == hold_id) & (h.state == WAITING))
                .values(state=TIMED_OUT, answered_at=self._clock())
            ).rowcount
            if done == 1:
                return TIMED_OUT, ""
            row = conn.execute(
                sa.select(h.state, h.answered_by).where(h.hold_id == hold_id)
            ).first()
        if row is not None and row.state in (ALLOWED, REFUSED):
            return str(row.state), str(row.answered_by or "")
        return TIMED_OUT, ""

    def _finish(self, hold_id: str, state: str) -> None:
        h = COMMAND_HOLDS.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(COMMAND_HOLDS)
                .where((h.hold_id == hold_id) & (h.state == WAITING))
                .values(state=state, answered_at=self._clock())
            )

    def _read(self, hold_ids: list[str]) -> list[tuple[str, str, str]]:
        h = COMMAND_HOLDS.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(h.hold_id, h.state, h.answered_by).where(h.hold_id.in_(hold_ids))
            ).all()
        return [(r.hold_id, r.state, r.answered_by or "") for r in rows]

    async def _check(self, *holds: HeldCommand) -> None:
        """Re-read these lines' rows and resolve the ones answered there."""
        pending = [h for h in holds if h.pending]
        if not pending:
            return
        try:
            rows = await asyncio.to_thread(self._read, [h.hold_id for h in pending])
        except Exception as exc:  # tried again at the next re-check
            log.warning("reading held lines failed: %s", exc)
            return
        for hold_id, state, by in rows:
            local = self._local.get(hold_id)
            if local is not None and state in (ALLOWED, REFUSED):
                local.decide(state, by)

    def _changed(self, changes: list[Change] | None) -> None:
        """The change feed (on the loop): an answered line of ours, or anything."""
        if changes is None or ("all", "") in changes:
            named = list(self._local.values())
        else:
            named = [
                h for k, i in changes if k == HOLD_CHANGE and (h := self._local.get(i)) is not None
            ]
        if named:
            task = asyncio.ensure_future(self._check(*named))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resolve(self, hold_id: str, decision: str, by: str) -> None:
        local = self._local.get(hold_id)
        if local is not None:
            local.decide(decision, by)

    # --- any replica: listing and answering (blocking) ----------------------------------

    def _hold(self, row: Any) -> ClusterHold:
        return ClusterHold(
            hold_id=row.hold_id,
            session_id=row.session_id,
            replica_id=row.replica_id,
            instrument=row.instrument,
            hospital_id=row.hospital_id,
            user_id=row.user_id,
            username=row.username,
            command=row.command,
            reason=row.reason,
            held_at=row.held_at,
            deadline=row.deadline,
            state=row.state,
            board=self,
        )

    def waiting(self) -> list[ClusterHold]:
        h = COMMAND_HOLDS.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(COMMAND_HOLDS)
                .where((h.state == WAITING) & (h.deadline > self._clock()))
                .order_by(h.held_at)
                .limit(MAX_LISTED)
            ).all()
        return [self._hold(r) for r in rows]

    def lookup(self, hold_id: str) -> list[ClusterHold]:
        h = COMMAND_HOLDS.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(COMMAND_HOLDS).where(h.hold_id == hold_id)).first()
        return [self._hold(row)] if row is not None else []

    def answer_row(self, hold_id: str, decision: str, by: str) -> bool:
        """``waiting`` → ``decision`` before the deadline; True for the first answer."""
        if decision not in (ALLOWED, REFUSED):
            raise ValueError(f"a hold is {ALLOWED} or {REFUSED}, not {decision!r}")
        h = COMMAND_HOLDS.c
        now = self._clock()
        with self.engine.begin() as conn:
            won = conn.execute(
                sa.update(COMMAND_HOLDS)
                .where((h.hold_id == hold_id) & (h.state == WAITING) & (h.deadline > now))
                .values(state=decision, answered_by=by, answered_at=now)
            ).rowcount
            if won != 1:
                return False
            bump_version(conn, {(HOLD_CHANGE, hold_id)})  # its NOTIFY wakes the owner
        loop = self._loop
        if hold_id in self._local and loop is not None:  # ours: no need to wait for it
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resolve, hold_id, decision, by)
        return True

    # --- lines nobody waits for any more ------------------------------------------------

    def end_own_leftovers(self) -> int:
        """At start: the lines a previous process of this replica id left waiting."""
        h = COMMAND_HOLDS.c
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    sa.update(COMMAND_HOLDS)
                    .where((h.replica_id == self.replica_id) & (h.state == WAITING))
                    .values(state=ENDED, answered_at=self._clock())
                ).rowcount
            )

    def sweep(self) -> int:
        """Lines of replicas that stopped beating are ended; old rows deleted.  Nothing is
        ended unless this replica beats itself (else it is more likely the one cut off)."""
        h, r = COMMAND_HOLDS.c, REPLICAS.c
        now = self._clock()
        since = now - self._dead_after
        ended = 0
        with self.engine.begin() as conn:
            mine = conn.execute(
                sa.select(r.replica_id).where(
                    (r.replica_id == self.replica_id) & (r.last_seen > since)
                )
            ).first()
            if mine is not None:
                dead = sa.select(r.replica_id).where(r.last_seen <= since)
                ended = int(
                    conn.execute(
                        sa.update(COMMAND_HOLDS)
                        .where((h.state == WAITING) & h.replica_id.in_(dead))
                        .values(state=ENDED, answered_at=now)
                    ).rowcount
                )
            old = now - self._keep
            conn.execute(
                sa.delete(COMMAND_HOLDS).where(
                    ((h.state != WAITING) & (h.answered_at < old))
                    | ((h.state == WAITING) & (h.deadline < old))
                )
            )
        return ended

    async def run(self) -> None:
        """Listen to the change feed for answers and sweep, until cancelled."""
        self._loop = asyncio.get_running_loop()
        if self._feed is not None:
            self._feed.subscribe(self._changed)
        try:
            while True:
                await asyncio.sleep(SWEEP_S)
                try:
                    if await asyncio.to_thread(self.sweep):
                        log.warning("held lines of a lost replica ended")
                except Exception as exc:  # tried again at the next sweep
                    log.error("sweeping held lines failed: %s", exc)
        finally:
            if self._feed is not None:
                self._feed.unsubscribe(self._changed)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
