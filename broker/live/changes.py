"""The change feed: live sessions end when the database says so, without polling it.

Every committed change that can end a live session (a grant revoked, ended or
expired, an engineer locked, expired or stripped of a role, an organisation,
contract or policy changed) bumps ``change_feed.version`` in its own
transaction (:func:`broker.store.db.bump_version`).  Each replica learns of it
three ways, cheapest first:

* **its own writes**: the store tells the feed right after the commit;
* **NOTIFY** (PostgreSQL): one dedicated connection per replica LISTENs on
  ``hoshu_changes``; the payload names the version and what changed
  (``("grant", id)``, ``("user", id)`` or ``("all", "")``);
* **re-read**: the same connection reads the version every ``reread_s``
  (default 2 s).  A version it has not been told of (a missed notification, a
  write by another process on SQLite) re-checks every live session.

Only sessions a change names are asked about (one ``grant_end`` per grant);
expiry and the 5- and 1-minute warnings come from the grant end each session
holds, checked on the loop every second without a query.  With N live
sessions the steady cost is one version read per ``reread_s`` per replica,
whatever N is.

**Fail closed**: the view is *current* while the last successful version read
is at most ``confirm_s`` old (default 10 s).  Past that (the listening
connection lost and re-reads failing) the replica ends every live session with
``view_unconfirmed`` and the front door refuses new logins until a read
succeeds again.

:class:`DbCalls` runs blocking database calls (the front door's key, TOTP and
grant look-ups, the watcher's ``grant_end``) on a bounded thread pool, so a
slow database, or SQLite's ``BEGIN IMMEDIATE`` queued behind a writer, never
stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from broker.live.sessions import FLUSH_EVERY_S, VIEW_UNCONFIRMED, LiveSession, SessionRegistry
from broker.store.db import CHANGE_CHANNEL, Change, Store

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

REREAD_S = 2.0
CONFIRM_S = 10.0
READ_TIMEOUT_MS = 3000  # the listening connection's statement timeout
RECONNECT_S = (0.2, 0.5, 1.0, 2.0)  # waits between attempts to listen again
# the listening connection's TCP keepalives (s) and send timeout (ms): a dead path fails fast
KEEPALIVE = (
    ("TCP_KEEPIDLE", 3),
    ("TCP_KEEPINTVL", 1),
    ("TCP_KEEPCNT", 3),
    ("TCP_USER_TIMEOUT", 6000),
)


def _keepalive(fd: int) -> None:
    """A silent peer (a cut network, no reset) fails the listening connection within
    seconds instead of TCP's minutes, so it is dialled again once the network is back."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in KEEPALIVE:
                if hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        log.warning("change feed: cannot set keepalives on the listening connection")
    finally:
        sock.close()  # the duplicate only


class DbCalls:
    """Blocking database calls off the event loop, at most ``threads`` at once."""

    def __init__(self, threads: int = 8) -> None:
        if threads < 1:
            raise ValueError("the database thread pool needs at least one thread")
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hoshu-db")

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


Listener = Callable[[list[Change] | None], None]  # None: anything may have changed


class ChangeFeed:
    """One replica's view of the change feed (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        reread_s: float = REREAD_S,
        confirm_s: float = CONFIRM_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.reread_s = reread_s
        self.confirm_s = confirm_s
        self._monotonic = monotonic
        self.version = -1  # the last version this replica has acted on
        self._confirmed = -float("inf")  # monotonic time of the last successful read
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self.reads = 0  # successful version reads (the feed's whole steady query load)
        self.notifications = 0
        self.ready = asyncio.Event()  # set by the first successful read

    # --- what the rest of the replica asks ------------------------------------
    def current(self) -> bool:
        """True while this replica's view of the database is confirmed current."""
        return self._monotonic() - self._confirmed <= self.confirm_s

    @property
    def started(self) -> bool:
        """The feed runs (before, nothing relies on it: no session is watched by it)."""
        return self._loop is not None

    def subscribe(self, listener: Listener) -> None:
        """``listener`` is called on the event loop with what changed."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # --- running -------------------------------------------------------------------
    async def run(self) -> None:
        """Listen and re-read until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self.store.change_listeners.append(self._local)
        target = self._listen_pg if self.store.is_postgres else self._reread_sqlite
        thread = threading.Thread(target=target, daemon=True, name="hoshu-change-feed")
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            with contextlib.suppress(ValueError):
                self.store.change_listeners.remove(self._local)

    def stop(self) -> None:
        self._stop.set()

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(fn, *args)

    # --- on the loop -----------------------------------------------------------------
    def _tell(self, changes: list[Change] | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(changes)
            except Exception:
                log.exception("change listener failed")

    def _read_done(self, version: int, fresh: bool) -> None:
        """A successful version read: the view is confirmed current as of now."""
        self._confirmed = self._monotonic()
        self.reads += 1
        if fresh or version != self.version:
            # first read, a reconnect (notifications may be lost) or a version nobody
            # announced: every live session is checked again
            self.version = max(self.version, version)
            self._tell(None)
        self.ready.set()

    def _announced(self, version: int, changes: list[Change]) -> None:
        self.notifications += 1
        if version <= self.version:
            return  # already acted on (a read saw it first)
        gap = self.version >= 0 and version > self.version + 1
        self.version = version
        self._tell(None if gap else changes)

    # --- threads -----------------------------------------------------------------------
    def _local(self, version: int, changes: list[Change]) -> None:
        """This process committed a change (any thread)."""
        if self.store.is_postgres:
            # act at once; the version moves when its NOTIFY arrives (in commit order)
            self._post(self._tell, list(changes))
        else:
            self._post(self._announced, version, list(changes))

    def _reread_sqlite(self) -> None:
        """SQLite (one process): re-read the version, without taking the write lock."""
        while True:
            try:
                raw = self.store.engine.raw_connection()
                try:
                    cur = raw.cursor()
                    cur.execute("SELECT version FROM change_feed WHERE id = 1")
                    row = cur.fetchone()
                    cur.close()
                finally:
                    raw.close()
                self._post(self._read_done, int(row[0]) if row else 0, False)
            except Exception as exc:
                log.warning("change feed: cannot read the version (%s)", type(exc).__name__)
            if self._stop.wait(self.reread_s):
                return

    def _listen_pg(self) -> None:
        """PostgreSQL: one dedicated connection LISTENs and re-reads the version."""
        attempt = 0
        while not self._stop.is_set():
            conn: Any = None
            try:
                fairy = self.store.engine.raw_connection()
                conn = fairy.driver_connection
                fairy.detach()  # this replica's own connection, outside the pool
                conn.rollback()
                conn.autocommit = True
                _keepalive(conn.pgconn.socket)
                conn.execute(f"SET statement_timeout = {READ_TIMEOUT_MS}")
                conn.execute(f"LISTEN {CHANGE_CHANNEL}")
                self._read_pg(conn, fresh=True)
                attempt = 0
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=self.reread_s):
                        self._notified(note.payload)
                    self._read_pg(conn, fresh=False)
            except Exception as exc:
                log.warning("change feed: listening connection lost (%s)", type(exc).__name__)
                self._stop.wait(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
                attempt += 1
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _read_pg(self, conn: Any, *, fresh: bool) -> None:
        row = conn.execute("SELECT version FROM change_feed WHERE id = 1").fetchone()
        self._post(self._read_done, int(row[0]) if row else 0, fresh)

    def _notified(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            version = int(note["v"])
            changes = [(str(k), str(i)) for k, i in note["c"]]
        except (ValueError, KeyError, TypeError):
            log.warning("change feed: unreadable notification; checking every session")
            self._post(self._tell, None)
            return
        self._post(self._announced, version, changes)


def _named(changes: set[Change], sessions: set[str]) -> Callable[[LiveSession], bool]:
    """The sessions a change names (their grant or engineer), and ``sessions``."""
    grants = {i for k, i in changes if k == "grant"}
    users = {i for k, i in changes if k == "user"}
    return lambda s: s.grant_id in grants or s.user_id in users or s.session_id in sessions


async def watch_changes(
    registry: SessionRegistry,
    feed: ChangeFeed,
    calls: DbCalls,
    clock: Callable[[], datetime],
) -> None:
    """The grant watcher on the change feed (replaces :meth:`SessionRegistry.watch`).

    Each wake-up (a change, or every second): recordings flushed, the fail-closed
    bound checked, the sessions a change names asked about off the loop, then every
    session's expiry and warnings from the grant end it holds (no query)."""
    everything = True
    named: set[Change] = set()
    seen: set[str] = set()  # sessions checked once already
    wake = asyncio.Event()

    def changed(changes: list[Change] | None) -> None:
        nonlocal everything
        if changes is None or ("all", "") in changes:
            everything = True
        else:  # grants and engineers; terminate requests ("session") are not its business
            named.update(c for c in changes if c[0] in ("grant", "user"))
        wake.set()

    feed.subscribe(changed)
    last_flush = 0.0
    loop = asyncio.get_running_loop()
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), FLUSH_EVERY_S)
            wake.clear()
            if loop.time() - last_flush >= FLUSH_EVERY_S:
                last_flush = loop.time()
                try:
                    registry.flush_recordings()
                except Exception:
                    log.exception("recording flush pass failed")
            live = [s for s in registry.list() if s.ended_reason is None]
            if not feed.current():
                for s in live:
                    log.error("view not confirmed current; ending session %s", s.session_id)
                    registry.terminate(s.session_id, by="hoshu", reason=VIEW_UNCONFIRMED)
                continue
            fresh = {s.session_id for s in live if s.session_id not in seen}
            seen.intersection_update(s.session_id for s in live)
            try:
                if everything:
                    everything = False
                    named.clear()
                    await calls(registry.check_once)
                    seen.update(s.session_id for s in live)
                elif named or fresh:
                    pick = _named(set(named), fresh)
                    named.clear()
                    await calls(registry.check_once, pick)
                    seen.update(fresh)
                registry.check_once(ask=False)
            except Exception:
                log.exception("session watcher pass failed")
    finally:
        feed.unsubscribe(changed)
