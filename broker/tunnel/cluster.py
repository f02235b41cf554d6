"""Several broker replicas on one database: who is alive, who holds which tunnel.

Two tables (:data:`broker.store.tables.REPLICAS`, :data:`~broker.store.tables.GATEWAY_TUNNELS`):

* a replica's row names it (``settings.replica_id``, default the host name), the
  address of its peer link and its peer public key.  The key is **pinned** by the
  first registration: a later process claiming the same id with another key is
  refused at start (:class:`PinConflict`); an operator who really replaced the
  key deletes the row first.
* a tunnel row says "replica R holds gateway G's tunnel", under the **epoch** of
  that one connection (a random nonce) and a beat counter.  Only a write naming
  the row's current epoch may refresh or delete it, and a beat only moves the
  counter forward, so a stale update (an older connection's late heartbeat or
  close, reordered writes) can never overwrite a newer connection's claim.

Liveness: each replica beats every :data:`HEARTBEAT_S` seconds, its own row first,
then every tunnel it holds.  The tunnel beats of a round are written :data:`BATCH`
rows per statement (:meth:`ClusterRegistry.tunnel_beats`: one ``UPDATE ... FROM`` a
``VALUES`` list, each row keeping the epoch guard and the forward-only beat),
so thousands of tunnels take a few statements, well inside the bound, instead of a
transaction each; a tunnel whose row was not refreshed is claimed again the same
way (:meth:`ClusterRegistry.tunnels_up`).  A replica or tunnel row older than
:data:`DEAD_AFTER_S` counts as gone: :meth:`ClusterRegistry.holders` never returns
it.  Times come from the replicas' clocks, which must agree within a few seconds
(NTP).  SQLite needs 3.35 or later (``UPDATE ... FROM``, ``RETURNING``).

The methods are blocking (SQLAlchemy); asynchronous callers run them on the one
writer thread of :class:`ClusterWriter`, so this replica's writes happen in the
order they were made and never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from broker.store.tables import GATEWAY_TUNNELS, REPLICAS

HEARTBEAT_S = 5.0
DEAD_AFTER_S = 15.0  # three missed beats: a dead replica is detected within 15 s
BATCH = 500  # tunnel rows written by one statement of a heartbeat round

T = TypeVar("T")


class PinConflict(RuntimeError):
    """This process claims a replica id whose pinned peer key is another key."""


@dataclass(frozen=True, slots=True)
class Replica:
    replica_id: str
    peer_host: str
    peer_port: int
    peer_key: str  # OpenSSH public key line; empty: no pin (the link is refused)
    last_seen: datetime


class ClusterRegistry:
    """The replica and tunnel tables, as seen by one replica (``replica_id``)."""

    def __init__(
        self,
        engine: sa.Engine,
        replica_id: str,
        *,
        clock: Callable[[], datetime],
        dead_after_s: float = DEAD_AFTER_S,
    ) -> None:
        self.engine = engine
        self.replica_id = replica_id
        self._clock = clock
        self._dead_after = timedelta(seconds=dead_after_s)

    # --- this replica -----------------------------------------------------------

    def check_pin(self, peer_key: str) -> None:
        """Raise :class:`PinConflict` when this replica id is pinned to another key (at
        start, before anything listens)."""
        r = REPLICAS.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(r.peer_key).where(r.replica_id == self.replica_id)).first()
        if row is not None and row.peer_key and row.peer_key != peer_key:
            raise PinConflict(
                f"replica {self.replica_id!r} is pinned to another peer key; if that key "
                "was really replaced, delete its row from broker_replicas first"
            )

    def register(self, peer_host: str, peer_port: int, peer_key: str) -> None:
        """Publish this replica's peer address; pin ``peer_key`` on first registration.

        Raises :class:`PinConflict` (nothing written) when the id is pinned to another key.
        """
        now = self._clock()
        r = REPLICAS.c
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(r.peer_key).where(r.replica_id == self.replica_id)).first()
            if row is not None and row.peer_key and row.peer_key != peer_key:
                raise PinConflict(
                    f"replica {self.replica_id!r} is pinned to another peer key; if that key "
                    "was really replaced, delete its row from broker_replicas first"
                )
            values = {
                "peer_host": peer_host,
                "peer_port": peer_port,
                "peer_key": peer_key,
                "started_at": now,
                "last_seen": now,
            }
            if row is None:
                conn.execute(sa.insert(REPLICAS).values(replica_id=self.replica_id, **values))
            else:
                conn.execute(
                    sa.update(REPLICAS).where(r.replica_id == self.replica_id).values(**values)
                )

    def beat(self) -> None:
        """This replica is alive."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(REPLICAS)
                .where(REPLICAS.c.replica_id == self.replica_id)
                .values(last_seen=self._clock())
            )

    def deregister(self) -> None:
        """Leave: drop this replica's tunnel rows and mark it gone (the pin stays)."""
        gone = self._clock() - self._dead_after - timedelta(seconds=1)
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(GATEWAY_TUNNELS).where(GATEWAY_TUNNELS.c.replica_id == self.replica_id)
            )
            conn.execute(
                sa.update(REPLICAS)
                .where(REPLICAS.c.replica_id == self.replica_id)
                .values(last_seen=gone)
            )

    # --- tunnels this replica holds ---------------------------------------------

    def tunnel_up(self, gateway_id: str, epoch: str) -> None:
        """Claim gateway ``gateway_id``'s tunnel for this replica under ``epoch`` (a
        newer connection's claim replaces an older one's)."""
        self.tunnels_up([(gateway_id, epoch)])

    def tunnels_up(self, claims: Sequence[tuple[str, str]]) -> None:
        """:meth:`tunnel_up` of each ``(gateway_id, epoch)``, in order (a later claim of
        the same gateway wins), one transaction of at most two statements per
        :data:`BATCH` gateways: this replica's existing rows take the new epoch, beat 0
        and times; the missing rows are inserted.

        The claim names no old epoch: whatever connection this replica's row names, it
        is replaced.  The caller decides that ``epoch`` is this replica's current
        connection of the gateway (:class:`broker.tunnel.peer.PeerLink` asks its
        tunnel registry first)."""
        items = list(dict(claims).items())  # one row per gateway: its last claim
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            now = self._clock()
            params = _rows_params(("gateway_id", "epoch"), chunk)
            with self.engine.begin() as conn:
                found = conn.execute(
                    _claims_statement(len(chunk)), {**params, "me": self.replica_id, "now": now}
                ).scalars()
                claimed = set(found)
                rows = [
                    {
                        "gateway_id": gw,
                        "replica_id": self.replica_id,
                        "epoch": epoch,
                        "beat": 0,
                        "connected_at": now,
                        "last_seen": now,
                    }
                    for gw, epoch in chunk
                    if gw not in claimed
                ]
                if rows:
                    conn.execute(sa.insert(GATEWAY_TUNNELS), rows)

    def tunnel_beat(self, gateway_id: str, epoch: str, beat: int) -> bool:
        """Refresh the claim of connection ``epoch``; False (nothing changed) when the row
        belongs to another epoch or is gone, or ``beat`` is not newer than the stored one."""
        return (gateway_id, epoch) in self.tunnel_beats([(gateway_id, epoch, beat)])

    def tunnel_beats(self, beats: Sequence[tuple[str, str, int]]) -> set[tuple[str, str]]:
        """:meth:`tunnel_beat` of each ``(gateway_id, epoch, beat)``: the ``(gateway_id,
        epoch)`` pairs whose row was refreshed.  One transaction of one statement per
        :data:`BATCH` tunnels (a heartbeat round of thousands of tunnels takes a few
        statements, not a transaction each); each row keeps the guard of one beat: this
        replica's row, that epoch, and a beat newer than the stored one (of one pair
        given twice, the newer beat counts, as when written one after the other)."""
        newest: dict[tuple[str, str], int] = {}
        for gw, epoch, beat in beats:
            newest[gw, epoch] = max(beat, newest.get((gw, epoch), beat))
        wanted = [(gw, epoch, beat) for (gw, epoch), beat in newest.items()]
        done: set[tuple[str, str]] = set()
        for start in range(0, len(wanted), BATCH):
            chunk = wanted[start : start + BATCH]
            params = _rows_params(("gateway_id", "epoch", "beat"), chunk)
            params.update(me=self.replica_id, now=self._clock())
            with self.engine.begin() as conn:
                updated = conn.execute(_beats_statement(len(chunk)), params).all()
            done.update((row.gateway_id, row.epoch) for row in updated)
        return done

    def tunnel_down(self, gateway_id: str, epoch: str) -> bool:
        """Drop the claim of connection ``epoch``; False when a newer one holds the row."""
        t = GATEWAY_TUNNELS.c
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.delete(GATEWAY_TUNNELS).where(
                    (t.gateway_id == gateway_id)
                    & (t.replica_id == self.replica_id)
                    & (t.epoch == epoch)
                )
            ).rowcount
        return bool(done)

    # --- the others ---------------------------------------------------------------

    def replica(self, replica_id: str) -> Replica | None:
        """A replica's row, alive or not (the pin of a connecting peer)."""
        r = REPLICAS.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(r.replica_id, r.peer_host, r.peer_port, r.peer_key, r.last_seen).where(
                    r.replica_id == replica_id
                )
            ).first()
        return _replica(row) if row is not None else None

    def live_replicas(self) -> list[Replica]:
        """Every replica that beat within the bound (this one included)."""
        r = REPLICAS.c
        since = self._clock() - self._dead_after
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(r.replica_id, r.peer_host, r.peer_port, r.peer_key, r.last_seen)
                .where(r.last_seen > since)
                .order_by(r.replica_id)
            ).all()
        return [_replica(row) for row in rows]

    def holders(self, gateway_id: str) -> list[Replica]:
        """Other live replicas holding a live tunnel of ``gateway_id``, freshest first."""
        r, t = REPLICAS.c, GATEWAY_TUNNELS.c
        since = self._clock() - self._dead_after
        query = (
            sa.select(r.replica_id, r.peer_host, r.peer_port, r.peer_key, r.last_seen)
            .select_from(GATEWAY_TUNNELS.join(REPLICAS, t.replica_id == r.replica_id))
            .where(
                (t.gateway_id == gateway_id)
                & (t.replica_id != self.replica_id)
                & (t.last_seen > since)
                & (r.last_seen > since)
            )
            .order_by(t.last_seen.desc())
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_replica(row) for row in rows]


# The batched writes: ``UPDATE ... FROM v``, ``v`` a common table expression of
# ``VALUES`` rows, which both PostgreSQL and SQLite (3.35+: ``UPDATE ... FROM``,
# ``RETURNING``) accept; SQLite refuses column names on a ``(VALUES ...) AS v(...)``
# subquery, so the columns are the names both give a VALUES list (column1, column2,
# ...).  The VALUES list is text with one named, typed bind parameter per cell: its
# statement's shape depends only on its number of rows and SQLAlchemy compiles it once
# per size (its ``values()`` construct is compiled anew on every call, a tenth of a
# second per 500 rows).


def _values(names: tuple[str, ...], n: int) -> dict[str, sa.ColumnElement[Any]]:
    """The columns ``names`` of ``n`` rows of bind parameters ``<name>_<row>``."""
    t = GATEWAY_TUNNELS.c
    rows = ", ".join("(" + ", ".join(f":{c}_{i}" for c in names) + ")" for i in range(n))
    values = (
        sa.text(f"VALUES {rows}")
        .bindparams(*(sa.bindparam(f"{c}_{i}", type_=t[c].type) for i in range(n) for c in names))
        .columns(*(sa.column(f"column{k}", t[c].type) for k, c in enumerate(names, 1)))
        .cte("v")
    )
    return {c: values.c[f"column{k}"] for k, c in enumerate(names, 1)}


def _rows_params(names: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """The bind parameters of ``rows`` for :func:`_values`."""
    return {
        f"{c}_{i}": value for i, row in enumerate(rows) for c, value in zip(names, row, strict=True)
    }


@functools.lru_cache(maxsize=64)
def _beats_statement(n: int) -> sa.Update:
    """:meth:`ClusterRegistry.tunnel_beats` of ``n`` rows (parameters ``me``, ``now``)."""
    t = GATEWAY_TUNNELS.c
    v = _values(("gateway_id", "epoch", "beat"), n)
    return (
        sa.update(GATEWAY_TUNNELS)
        .where(
            (t.gateway_id == v["gateway_id"])
            & (t.replica_id == sa.bindparam("me", type_=t.replica_id.type))
            & (t.epoch == v["epoch"])
            & (t.beat < v["beat"])
        )
        .values(beat=v["beat"], last_seen=sa.bindparam("now", type_=t.last_seen.type))
        .returning(t.gateway_id, t.epoch)
    )


@functools.lru_cache(maxsize=16)
def _claims_statement(n: int) -> sa.Update:
    """The update half of :meth:`ClusterRegistry.tunnels_up` of ``n`` rows."""
    t = GATEWAY_TUNNELS.c
    v = _values(("gateway_id", "epoch"), n)
    now = sa.bindparam("now", type_=t.last_seen.type)
    return (
        sa.update(GATEWAY_TUNNELS)
        .where(
            (t.gateway_id == v["gateway_id"])
            & (t.replica_id == sa.bindparam("me", type_=t.replica_id.type))
        )
        .values(epoch=v["epoch"], beat=0, connected_at=now, last_seen=now)
        .returning(t.gateway_id)
    )


def _replica(row: Any) -> Replica:
    return Replica(row.replica_id, row.peer_host, int(row.peer_port), row.peer_key, row.last_seen)


class ClusterWriter:
    """Runs :class:`ClusterRegistry` calls on one thread, in order, off the event loop."""

    def __init__(self, registry: ClusterRegistry) -> None:
        self.registry = registry
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hoshu-cluster"
        )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
