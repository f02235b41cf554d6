"""Live sessions: the registry, live following, termination, continuous grant checks.

Every relayed shell, exec, file-transfer channel and port forward is a
:class:`LiveSession` in the :class:`SessionRegistry` while it runs.  In the
broker the grant watcher follows the change feed
(:func:`broker.live.changes.watch_changes`: the policy is asked only about the
sessions a database change names, expiry and warnings come from the grant end
each session holds).  Without a feed (a front door on another policy) the
:meth:`SessionRegistry.watch` loop asks the access policy, every ``interval``
seconds, when each session's grant ends: a revoked or expired grant, or a
deactivated engineer (``grant_end`` says why it no longer holds), ends the
session at the next tick with that reason (``grant_expired`` is never reported
as ``grant_revoked``); 5 minutes and 1 minute before the end the engineer is
warned on their terminal.  A policy error counts as "no longer valid" (fail
closed, reason ``grant_check_failed``).  Each pass also flushes the sessions'
recordings, so a recording that can no longer be written ends its session
within about a second, however quiet the session is.

Ending comes first, the audit event second: :meth:`SessionRegistry.terminate`
tells the session to end before it writes ``session.terminated``.  An event
the audit log refuses is retried with backoff (:data:`RETRY_DELAYS_S`) on a
background thread, and ``alert.raised`` is written (or, if the audit log
itself is down, an error is logged with the event, which holds no secret).

**Ended once across replicas.**  With the cluster's session directory (``rows``,
PostgreSQL), a survivor ends a recorded session whose replica stopped beating
(``replica_lost``).  So the owner of a recorded session does not write its
``session.ended`` blindly when it may have been cut off: when the session ended
because the view of the database could not be confirmed (``view_unconfirmed``) or
the first attempt to write its end failed, a background thread first claims the
session's row (:meth:`broker.live.directory.SessionDirectory.claim_end`, one
transaction that also beats this replica's row), then writes the end; if another
replica ended it meanwhile, nothing is written (that replica's end stands).  The
claim is tried after each of :data:`RETRY_DELAYS_S`, then every last delay until
the database answers.  Every attempt writes the same event (one ``EventUid``):
an attempt that timed out but was committed and a later one are one event for the
index and the SIEMs.  Otherwise (the view current, the audit log answering) the
end is written at once, with no query of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from audit import new_event
from audit.emitter import Emitter
from audit.events import AuditEvent
from broker.access.door import AccessPolicy, GrantEnd
from broker.live.holds import HeldCommand
from broker.live.journal import LiveJournal, SessionRows

log = logging.getLogger(__name__)

VIEW_UNCONFIRMED = "view_unconfirmed"  # the fail-closed end (broker.live.changes)
WARN_AT_S = (300, 60)
_FOLLOW_QUEUE = 1024
FLUSH_EVERY_S = 1.0  # recordings reach the disk at least this often
# an audit event the log refused is tried again after each of these (about 2 minutes)
RETRY_DELAYS_S: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@runtime_checkable
class _Claims(Protocol):
    """The session directory, as the end of a possibly cut-off session uses it."""

    def claim_end(self, session_id: str) -> str | None:
        """None: this replica writes the end; else the replica that ended it.  Blocks;
        raises while the database cannot be reached."""
        ...


class TimedFlush(Protocol):
    """A session recording as the watcher sees it (``broker.live.recorder.Recording``)."""

    def flush(self) -> None:
        """Write what is buffered; raises (and stays failed) when it cannot."""
        ...


@dataclass(eq=False)
class LiveSession:
    """One running session or forward, as approvers and the watcher see it."""

    session_id: str
    kind: str  # shell, exec, sftp, scp, forward
    user_id: str
    username: str
    instrument: str
    hospital_id: str
    grant_id: str
    port: int
    started: datetime
    src: str = ""
    grant_ends: datetime | None = None
    recording: str = ""
    recorder: TimedFlush | None = field(default=None, repr=False)
    on_terminate: Callable[[str], None] = field(default=lambda _m: None, repr=False)
    on_warning: Callable[[str], None] | None = field(default=None, repr=False)
    warned: set[int] = field(default_factory=set, repr=False)
    followers: set[asyncio.Queue[bytes | None]] = field(default_factory=set, repr=False)
    ended_reason: str | None = None
    hold: HeldCommand | None = field(default=None, repr=False)  # a line waiting for an approver

    def columns(self) -> dict[str, Any]:
        return {
            "ActorUsername": self.username,
            "ActorUserId": self.user_id,
            "ActorUserType": "engineer",
            "SrcIpAddr": self.src or None,
            "TargetHostname": self.instrument,
            "TargetPortNumber": self.port,
            "TargetSessionId": self.session_id,
            "HospitalId": self.hospital_id or None,
            "GrantId": self.grant_id,
        }

    def publish(self, data: bytes) -> None:
        """Copy terminal output to live followers; a follower that lags is dropped."""
        for q in list(self.followers):
            if q.qsize() >= _FOLLOW_QUEUE:
                self.followers.discard(q)
                q.put_nowait(None)
            else:
                q.put_nowait(data)

    def close_followers(self) -> None:
        for q in list(self.followers):
            q.put_nowait(None)
        self.followers.clear()

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "kind": self.kind,
            "user": self.username,
            "instrument": self.instrument,
            "port": self.port,
            "hospital_id": self.hospital_id,
            "grant_id": self.grant_id,
            "started": self.started.isoformat(),
            "grant_ends": self.grant_ends.isoformat() if self.grant_ends else None,
            "src": self.src,
        }


class SessionRegistry:
    """Live sessions of one front door, with the grant watcher."""

    def __init__(
        self,
        policy: AccessPolicy,
        emitter: Emitter,
        clock: Callable[[], datetime],
        interval: float = 0.25,
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self._policy = policy
        self._emitter = emitter
        self._clock = clock
        self._interval = interval
        self._retry_delays = tuple(retry_delays)
        self._retrying: set[threading.Thread] = set()
        # recorded sessions on disk while they run, so a killed broker's are ended at start
        self.journal: LiveJournal | None = None
        # with PostgreSQL: the cluster's session directory (broker.live.directory) instead
        self.rows: SessionRows | None = None
        self._recorded: set[str] = set()  # with rows: recorded sessions not ended yet
        self._claim_first: set[str] = set()  # ended cut off: claim the row, then the end
        self._sessions: dict[str, LiveSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emptied: set[asyncio.Future[None]] = set()  # until_empty() waiters
        self._gone: dict[str, set[asyncio.Future[None]]] = {}  # until_gone() waiters

    def add(self, session: LiveSession) -> None:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # a registry used without a loop (pure tests)
                pass
        self._sessions[session.session_id] = session
        if self.rows is not None:
            self.rows.added(session)
            if session.recording:
                self._recorded.add(session.session_id)
        if self.journal is not None and session.recording:
            self.journal.opened(
                session.session_id,
                {
                    "columns": session.columns(),
                    "started": session.started.isoformat(),
                    "details": {"kind": session.kind, "recording": session.recording},
                },
            )

    def remove(self, session_id: str) -> None:
        s = self._sessions.pop(session_id, None)
        if s is not None:
            s.close_followers()
            if self.rows is not None:
                self.rows.removed(session_id)
        if not self._sessions:
            for waiter in self._emptied:
                if not waiter.done():
                    waiter.set_result(None)
        for waiter in self._gone.pop(session_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def until_gone(self, session_id: str, timeout_s: float) -> bool:
        """Wait until the session is no longer live (True) or ``timeout_s`` has passed
        (False); it leaves in the same step that writes its ``session.ended``."""
        if session_id not in self._sessions:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._gone.setdefault(session_id, set())
        waiters.add(waiter)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=max(0.0, timeout_s))
            return bool(done)
        finally:
            waiters.discard(waiter)
            if not waiters and self._gone.get(session_id) is waiters:
                del self._gone[session_id]

    async def until_empty(self, timeout_s: float) -> bool:
        """Wait until no session is live (True) or ``timeout_s`` has passed (False).

        A session leaves in the same step that writes its ``session.ended``."""
        if not self._sessions:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._emptied.add(waiter)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=max(0.0, timeout_s))
            return bool(done)
        finally:
            self._emptied.discard(waiter)
            waiter.cancel()

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def list(self, hospital_id: str | None = None) -> list[LiveSession]:
        return [
            s
            for s in self._sessions.values()
            if hospital_id is None or s.hospital_id == hospital_id
        ]

    def terminate(self, session_id: str, *, by: str, reason: str) -> bool:
        """End a live session now (approver action or the watcher); False if unknown.

        Safe to call from another thread (a synchronous API route): the relay
        is then told on its own event loop.
        """
        s = self._sessions.get(session_id)
        if s is None or s.ended_reason is not None:
            return False
        s.ended_reason = reason
        if reason == VIEW_UNCONFIRMED and session_id in self._recorded:
            self._claim_first.add(session_id)  # a survivor may end it too: claim first
        self._end(s, reason)  # first: the session ends even if the audit log is down
        self.emit(
            "session.terminated",
            EventResultDetails=reason,
            EventMessage=f"session {session_id} of {s.username} on {s.instrument} ended: {reason}",
            details={"kind": s.kind, "by": by, "recording": s.recording or None},
            **s.columns(),
        )
        return True

    def emit(self, type_: str, *, details: dict[str, Any] | None = None, **cols: Any) -> None:
        """Write an enforced session event; never raises.

        If the audit log refuses it, ``alert.raised`` is written (or an error
        logged if that fails too) and the event is retried in the background.
        A recorded session's ``session.ended`` that cannot be written at once, or
        that ends a session cut off from the database, is written only once its
        row is claimed (see the module docstring).
        """
        event = new_event(type_, clock=self._clock, details=details, **cols)
        sid = str(event.get("TargetSessionId") or "")
        claim = type_ == "session.ended" and sid in self._recorded
        if claim and sid in self._claim_first:
            self._claim_first.discard(sid)
            self._background(event, claim=True, at_once=True)
            return
        try:
            self._emitter.emit(event)
            self._written(event)
            return
        except Exception as exc:
            log.error("audit log refused %s (%s); retrying", type_, type(exc).__name__)
        self._alert(event)
        self._background(event, claim=claim)

    def _background(self, event: AuditEvent, *, claim: bool, at_once: bool = False) -> None:
        t = threading.Thread(
            target=self._retry,
            args=(event, claim, at_once),
            daemon=True,
            name=f"hoshu-audit-retry-{event.type}",
        )
        self._retrying.add(t)
        t.start()

    def _alert(self, event: AuditEvent) -> None:
        try:
            self._emitter.emit(
                new_event(
                    "alert.raised",
                    clock=self._clock,
                    EventResultDetails="audit_write_failed",
                    EventMessage=f"the audit log refused {event.type}; hoshu is retrying",
                    details={"alert": "audit_write_failed", "reason": event.type},
                    TargetSessionId=event.get("TargetSessionId"),
                    HospitalId=event.get("HospitalId"),
                )
            )
        except Exception:
            log.error("audit log unavailable: cannot raise the alert for %s", event.type)

    def _delays(self, claim: bool, at_once: bool) -> Iterator[float]:
        if at_once:
            yield 0.0
        yield from self._retry_delays
        while claim and self._retry_delays:  # the database decides; until it answers
            yield self._retry_delays[-1]

    def _retry(self, event: AuditEvent, claim: bool = False, at_once: bool = False) -> None:
        sid = str(event.get("TargetSessionId") or "")
        rows = self.rows
        claims = rows if claim and isinstance(rows, _Claims) else None
        try:
            for delay in self._delays(claims is not None, at_once):
                time.sleep(delay)
                try:
                    if claims is not None and claims.claim_end(sid) is not None:
                        self._recorded.discard(sid)  # another replica ended it: its end stands
                        return
                    self._emitter.emit(event)
                    self._written(event)
                    log.warning("audit event %s written after retrying", event.type)
                    return
                except Exception as exc:
                    log.error("%s still cannot be written (%s)", event.type, type(exc).__name__)
            # the last place left: the process log, so the event can be recovered
            log.critical(
                "audit event lost after %d retries: %s", len(self._retry_delays), event.to_json()
            )
        finally:
            self._retrying.discard(threading.current_thread())

    def _written(self, event: AuditEvent) -> None:
        if event.type == "session.ended":
            self._recorded.discard(str(event.get("TargetSessionId") or ""))
        if event.type == "session.ended" and self.journal is not None:
            self.journal.closed(str(event.get("TargetSessionId") or ""))
        if event.type == "session.ended" and self.rows is not None:
            self.rows.ended(str(event.get("TargetSessionId") or ""))

    def retries_pending(self) -> int:
        """Events still being retried (tests and shutdown)."""
        return sum(1 for t in list(self._retrying) if t.is_alive())

    def _end(self, s: LiveSession, reason: str) -> None:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            loop.call_soon_threadsafe(self._notify, s, reason)
        else:
            self._notify(s, reason)

    @staticmethod
    def _notify(s: LiveSession, reason: str) -> None:
        try:
            s.on_terminate(reason)
        except Exception:  # the session is torn down by its own task either way
            log.exception("terminating session %s", s.session_id)

    async def follow(self, session_id: str) -> AsyncIterator[bytes]:
        """Yield the live terminal output of a session (read-only) until it ends."""
        s = self._sessions.get(session_id)
        if s is None:
            return
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        s.followers.add(q)
        try:
            while (chunk := await q.get()) is not None:
                yield chunk
        finally:
            s.followers.discard(q)

    def check_once(
        self, only: Callable[[LiveSession], bool] | None = None, *, ask: bool = True
    ) -> None:
        """One pass of the grant watcher (the loop calls this every ``interval``).

        ``only``: the sessions to look at (default all); ``ask=False``: no question to
        the policy, expiry and warnings from the grant end each session holds
        (the change feed's watcher, :func:`broker.live.changes.watch_changes`)."""
        now = self._clock()
        answers: dict[tuple[str, str], GrantEnd] = {}  # one question per grant a pass
        for s in list(self._sessions.values()):
            if s.ended_reason is not None or (only is not None and not only(s)):
                continue
            key = (s.grant_id, s.user_id)
            if not ask:
                if s.grant_ends is None:
                    continue
                answers[key] = GrantEnd(s.grant_ends)
            elif key not in answers:
                try:
                    answers[key] = self._policy.grant_end(s.grant_id, s.user_id, now)
                except Exception:
                    log.exception("grant check failed; ending session %s", s.session_id)
                    answers[key] = GrantEnd(None, "grant_check_failed")
            end = answers[key].ends
            if end is None:
                why = answers[key].why or "grant_check_failed"
                self.terminate(s.session_id, by="hoshu", reason=why)
                continue
            s.grant_ends = end
            remaining = (end - now).total_seconds()
            if remaining <= 0:
                self.terminate(s.session_id, by="hoshu", reason="grant_expired")
                continue
            due = [w for w in WARN_AT_S if remaining <= w and w not in s.warned]
            if due:
                s.warned.update(w for w in WARN_AT_S if w >= min(due))
                self._warn(s, remaining, end)

    def _warn(self, s: LiveSession, remaining: float, end: datetime) -> None:
        mins = max(1, round(remaining / 60))
        text = (
            f"hoshu: your grant for {s.instrument} ends in {mins} minute"
            f"{'s' if mins != 1 else ''} (at {end:%H:%M:%S} UTC); "
            "the session will be closed then"
        )
        self._emitter.emit(
            new_event(
                "session.warning",
                clock=self._clock,
                EventMessage=text,
                details={"remaining_s": int(remaining)},
                **s.columns(),
            )
        )
        if s.on_warning is not None:
            with contextlib.suppress(Exception):
                s.on_warning(text)

    def flush_recordings(self) -> None:
        """Write every live session's buffered recording; a failing one ends its session."""
        for s in list(self._sessions.values()):
            if s.recorder is None or s.ended_reason is not None:
                continue
            try:
                s.recorder.flush()
            except Exception as exc:
                log.error("recording of session %s failed: %s", s.session_id, exc)
                self.terminate(
                    s.session_id, by="hoshu", reason=getattr(exc, "reason", "recording_failed")
                )

    async def watch(self) -> None:
        """Run the grant watcher (and the recordings' timed flush) until cancelled."""
        while True:
            try:
                self.flush_recordings()
            except Exception:
                log.exception("recording flush pass failed")
            try:
                self.check_once()
            except Exception:
                log.exception("session watcher pass failed")
            await asyncio.sleep(min(self._interval, FLUSH_EVERY_S))
