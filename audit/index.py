"""The auditors' index: events in SQL, queryable by who, where, what and when.

SQLAlchemy Core on SQLite (embedded) and PostgreSQL (production).  Only the
broker imports this module (the gateway install has no SQLAlchemy).  The index
is fed like any sink (:class:`IndexSink`, behind its own outbox cursor), so it
is never ahead of the tamper-evident log and catches up after an outage; a
re-sent batch is ignored by ``EventUid``.

Queries filter on time range, hospital, instrument, engineer (user name or
id), vendor, event type, outcome, session, request and grant, newest first
or oldest first, with keyset pagination (a page token, no OFFSET) so deep pages
stay fast.  Each filter column is indexed together with ``TimeGenerated`` (the
columns most events leave empty only where they are set); on
PostgreSQL the user-name index carries the records as well, so an engineer's
events are read from the index alone (``VACUUM``, which autovacuum runs here
every 10,000 new rows, marks the table pages that allows).  :meth:`AuditIndex.create`
brings a table of an earlier version up to date.

Errors: :class:`QueryError` (bad filters: unknown type, end before start,
page size out of range, forged page token) — nothing is read.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    inspect,
    literal_column,
    or_,
    select,
    text,
    union_all,
)

from audit.catalog import CATALOG
from audit.engines import PasswordSource, create_engine, create_schema
from audit.errors import AuditError
from audit.events import format_time

METADATA = MetaData()
# Filterable columns, named as the event columns they copy.
_FILTERS = (
    "EventType",
    "EventResult",
    "HospitalId",
    "TargetHostname",
    "ActorUsername",
    "ActorUserId",
    "VendorId",
    "TargetSessionId",
    "RequestId",
    "GrantId",
    "GatewayId",
)

events_table = Table(
    "audit_events",
    METADATA,
    Column(
        "id",
        Integer().with_variant(BigInteger(), "postgresql"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("EventUid", String(64), nullable=False, unique=True),
    Column("ChainSeq", BigInteger, nullable=True),
    Column("TimeGenerated", String(32), nullable=False),  # fixed-width UTC ISO: sorts as text
    Column("EventType", String(64), nullable=False),
    Column("EventResult", String(16)),
    Column("HospitalId", String(64)),
    Column("TargetHostname", String(128)),
    Column("ActorUsername", String(128)),
    Column("ActorUserId", String(64)),
    Column("VendorId", String(64)),
    Column("TargetSessionId", String(64)),
    Column("RequestId", String(64)),
    Column("GrantId", String(64)),
    Column("GatewayId", String(64)),
    Column("record", Text, nullable=False),
)
# Columns most events leave empty (a vendor, gateway, request, grant or session the event
# concerns): their indexes hold only the events that name one.  A filter on such a
# column (``= value``, ``IN (...)``) implies ``IS NOT NULL``, so both databases answer
# it from the partial index.  The empty entries were most of these indexes (at 10M
# synthetic events five indexes of some 600 MB held nothing else), written on every
# insert and competing for the cache with the records index below.
_SPARSE = ("VendorId", "TargetSessionId", "RequestId", "GrantId", "GatewayId")
for _col in _FILTERS:
    if _col in _SPARSE:
        Index(
            f"ix_audit_events_{_col.lower()}_named",
            events_table.c[_col],
            events_table.c.TimeGenerated,
            events_table.c.id,
            postgresql_where=events_table.c[_col].is_not(None),
            sqlite_where=events_table.c[_col].is_not(None),
        )
    elif _col != "ActorUsername":
        Index(
            f"ix_audit_events_{_col.lower()}_time",
            events_table.c[_col],
            events_table.c.TimeGenerated,
            events_table.c.id,
        )
# "What did engineer X do between T1 and T2" is the auditors' main question.  On
# PostgreSQL its index carries the records too (INCLUDE), so the answer is read from
# a few consecutive index pages (an index-only scan) instead of one table page per
# event: an engineer's events are scattered over the whole table.  An index entry
# holds at most 2,704 bytes, so records longer than RECORD_IN_INDEX bytes stay out
# of it and have an index of their own (few events are that long).  SQLite: one
# index on the same key, without the records.
RECORD_IN_INDEX = 2000
_short = func.octet_length(events_table.c.record) <= literal_column(str(RECORD_IN_INDEX))
Index(
    "ix_audit_events_actorusername_records",
    events_table.c.ActorUsername,
    events_table.c.TimeGenerated,
    events_table.c.id,
    postgresql_include=["HospitalId", "EventType", "record"],
    postgresql_where=_short,
)
Index(
    "ix_audit_events_actorusername_long",
    events_table.c.ActorUsername,
    events_table.c.TimeGenerated,
    events_table.c.id,
    postgresql_where=~_short,
).ddl_if(dialect="postgresql")
Index("ix_audit_events_time", events_table.c.TimeGenerated, events_table.c.id)
# indexes of earlier versions that a current one replaces: dropped once it exists
_SUPERSEDED = {
    "ix_audit_events_actorusername_time": "ix_audit_events_actorusername_records",
    **{f"ix_audit_events_{c.lower()}_time": f"ix_audit_events_{c.lower()}_named" for c in _SPARSE},
}
# An index-only scan reads the heap for rows on pages not yet marked all-visible, which
# only VACUUM does; PostgreSQL's default vacuums an insert-only table after 20 % more
# rows (2M at 10M: weeks of recent events).  Vacuum after every 10,000 new rows instead:
# each run visits only the pages written since the last one.
_PG_TABLE_OPTIONS = {
    "autovacuum_vacuum_insert_threshold": "10000",
    "autovacuum_vacuum_insert_scale_factor": "0",
}
# one schema upgrade at a time when several broker replicas start together
_PG_SCHEMA_LOCK = int.from_bytes(
    hashlib.sha256(b"hoshu audit_events schema").digest()[:8], "big", signed=True
)

MAX_PAGE = 1000


# events that carry a command typed or run in a session (the --command filter)
COMMAND_TYPES = (
    "session.command",
    "session.command_denied",
    "session.command_held",
    "session.command_released",
    "session.refused",
)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _details(record: Mapping[str, Any]) -> Mapping[str, Any]:
    details = record.get("Details")
    return details if isinstance(details, Mapping) else {}


class QueryError(AuditError):
    """The query is invalid; nothing was read."""


@dataclass(frozen=True)
class EventQuery:
    start: datetime | None = None
    end: datetime | None = None  # exclusive
    hospital_id: str | None = None
    hospital_ids: tuple[str, ...] | None = None  # scope: None = all hospitals
    instrument: str | None = None
    engineer: str | None = None  # user name or user id
    vendor_id: str | None = None
    types: tuple[str, ...] = ()
    outcome: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    grant_id: str | None = None
    command: str | None = None  # text found in the command of a command event
    limit: int = 100
    newest_first: bool = False
    page: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.start and self.end and self.end <= self.start:
            raise QueryError("the end of the time range must be after its start")
        for t in (self.start, self.end):
            if t is not None and t.tzinfo is None:
                raise QueryError("times must carry a time zone (UTC)")
        if not 1 <= self.limit <= MAX_PAGE:
            raise QueryError(f"page size must be between 1 and {MAX_PAGE}")
        unknown = [t for t in self.types if t not in CATALOG]
        if unknown:
            raise QueryError(f"unknown event types: {', '.join(sorted(unknown))}")
        if self.outcome and self.outcome not in ("Success", "Failure", "Partial", "NA"):
            raise QueryError("outcome must be Success, Failure, Partial or NA")


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next_page: str | None


def _encode_page(time: str, id_: int) -> str:
    return base64.urlsafe_b64encode(f"{time}|{id_}".encode()).decode()


def _decode_page(token: str) -> tuple[str, int]:
    try:
        time, _, id_ = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        if len(time) != 27:
            raise ValueError(time)
        return time, int(id_)
    except ValueError as exc:
        raise QueryError("invalid page token") from exc


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    row = {c: (str(record[c])[:128] if record.get(c) is not None else None) for c in _FILTERS}
    row["EventUid"] = str(record["EventUid"])
    row["ChainSeq"] = record.get("ChainSeq")
    row["TimeGenerated"] = str(record["TimeGenerated"])
    row["record"] = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return row


class AuditIndex:
    """The event index on one database (``sqlite:///...``, ``postgresql://...`` or
    ``postgresql+psycopg://...``: the same URL rule as the broker's store)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, *, password: PasswordSource | None = None) -> AuditIndex:
        """Open (and create) the index; ``password`` signs each new PostgreSQL
        connection in (an Entra ID token) instead of the URL's password."""
        index = cls(create_engine(url, password=password, pool_pre_ping=True))
        index.create()
        return index

    def create(self) -> None:
        """Create the table, or bring an existing one up to this version: add the
        indexes it lacks (a plain ``CREATE INDEX``: inserts into the table wait while a
        large one is built, the events wait in the outbox), then drop the ones they
        replace; on PostgreSQL set the table's autovacuum options.  Idempotent; on
        PostgreSQL one replica at a time (an advisory lock held for the transaction)."""
        create_schema(self.engine, METADATA, "audit_events")
        postgres = self.engine.dialect.name == "postgresql"
        with self.engine.begin() as conn:
            if postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
            have = {ix["name"] for ix in inspect(conn).get_indexes(events_table.name)}
            for ix in sorted(events_table.indexes, key=lambda ix: str(ix.name)):
                if ix.name not in have:
                    ix.create(conn, checkfirst=True)  # skips one for another dialect
            have = {ix["name"] for ix in inspect(conn).get_indexes(events_table.name)}
            for old, new in _SUPERSEDED.items():
                if old in have and new in have:
                    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {old}")
            if postgres:
                options = conn.scalar(
                    text("SELECT reloptions FROM pg_class WHERE oid = 'audit_events'::regclass")
                )
                want = [f"{k}={v}" for k, v in _PG_TABLE_OPTIONS.items()]
                if not set(want) <= set(options or ()):
                    conn.exec_driver_sql(f"ALTER TABLE audit_events SET ({', '.join(want)})")

    def add(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Insert records not yet indexed (by EventUid); returns how many were new."""
        if not records:
            return 0
        rows = {str(r["EventUid"]): _row(r) for r in records}
        with self.engine.begin() as conn:
            known = set(
                conn.scalars(
                    select(events_table.c.EventUid).where(events_table.c.EventUid.in_(list(rows)))
                )
            )
            fresh = [row for uid, row in rows.items() if uid not in known]
            if fresh:
                conn.execute(insert(events_table), fresh)
        return len(fresh)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(events_table)) or 0)

    def search(self, q: EventQuery) -> Page:
        q.validate()
        t = events_table.c
        conds: list[Any] = []
        if q.start:
            conds.append(t.TimeGenerated >= format_time(q.start))
        if q.end:
            conds.append(t.TimeGenerated < format_time(q.end))
        for value, col in (
            (q.hospital_id, t.HospitalId),
            (q.instrument, t.TargetHostname),
            (q.vendor_id, t.VendorId),
            (q.outcome, t.EventResult),
            (q.session_id, t.TargetSessionId),
            (q.request_id, t.RequestId),
            (q.grant_id, t.GrantId),
        ):
            if value:
                conds.append(col == value)
        if q.hospital_ids is not None:
            conds.append(t.HospitalId.in_(list(q.hospital_ids)))
        if q.types:
            conds.append(t.EventType.in_(list(q.types)))
        if q.command:
            conds.append(t.EventType.in_(COMMAND_TYPES))
            conds.append(
                t.record.like(
                    f"%{_like(json.dumps(q.command, ensure_ascii=False)[1:-1])}%", escape="\\"
                )
            )
        if q.page:
            ptime, pid = _decode_page(q.page)
            if q.newest_first:
                conds.append(
                    or_(t.TimeGenerated < ptime, and_(t.TimeGenerated == ptime, t.id < pid))
                )
            else:
                conds.append(
                    or_(t.TimeGenerated > ptime, and_(t.TimeGenerated == ptime, t.id > pid))
                )

        def ordered(stmt: Any, src: Any) -> Any:
            order = (
                (src.TimeGenerated.desc(), src.id.desc())
                if q.newest_first
                else (src.TimeGenerated.asc(), src.id.asc())
            )
            return stmt.order_by(*order).limit(q.limit + 1)

        stmt = ordered(select(t.id, t.TimeGenerated, t.record).where(*conds), t)
        if q.engineer:
            # user name or user id, as two ordered index scans of at most a page each:
            # an OR of the two is a bitmap heap scan, one table page per event of the
            # window, where the user-name index alone carries the records
            who = q.engineer
            by_name = [stmt.where(t.ActorUsername == who)]
            if self.engine.dialect.name == "postgresql":  # the two partial indexes
                by_name = [by_name[0].where(_short), by_name[0].where(~_short)]
            by_id = stmt.where(t.ActorUserId == who, t.ActorUsername.is_distinct_from(who))
            parts = [select(b.subquery()) for b in (*by_name, by_id)]
            both = union_all(*parts).subquery().c
            stmt = ordered(select(both.id, both.TimeGenerated, both.record), both)
        # one statement reads one snapshot: no transaction around it, which saves the
        # BEGIN and ROLLBACK round trips a pooled connection otherwise costs per search
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            rows = conn.execute(stmt).all()
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        next_page = _encode_page(rows[-1].TimeGenerated, rows[-1].id) if more else None
        events = [json.loads(r.record) for r in rows]
        if q.command:  # the text was found in the record: keep it where it is in the command
            events = [e for e in events if q.command in str(_details(e).get("command") or "")]
        return Page(events, next_page)

    def iterate(self, q: EventQuery, *, max_rows: int = 1_000_000) -> Iterator[dict[str, Any]]:
        """Every matching event, page by page (for exports), at most ``max_rows``."""
        query, sent = replace(q, limit=MAX_PAGE, page=None), 0
        while True:
            page = self.search(query)
            for e in page.events:
                if sent >= max_rows:
                    raise QueryError(f"more than {max_rows} events match: narrow the query")
                sent += 1
                yield e
            if page.next_page is None:
                return
            query = replace(query, page=page.next_page)

    def count_before(self, before: datetime) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(events_table)
                    .where(events_table.c.TimeGenerated < format_time(before))
                )
                or 0
            )

    def delete_before(self, before: datetime, types: Sequence[str] | None = None) -> int:
        """Remove index rows older than ``before`` (retention; the caller logs it)."""
        t = events_table.c
        stmt = delete(events_table).where(t.TimeGenerated < format_time(before))
        if types:
            stmt = stmt.where(t.EventType.in_(list(types)))
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount or 0)


@dataclass(frozen=True)
class IndexCheck:
    """The index compared with the chain: ``ok`` when every indexed position holds
    exactly the chained event and nothing else is indexed."""

    ok: bool
    compared: int  # chained events found in the index, column for column
    upto: int  # positions up to here were expected in the index
    retired: int = 0  # missing because retention deleted them (announced in the chain)
    problems: tuple[str, ...] = ()


def _expected(record: Mapping[str, Any]) -> dict[str, Any]:
    row = _row(record)
    row["record"] = json.loads(row["record"])
    return row


def check_index(
    index: AuditIndex,
    chain: Iterable[Mapping[str, Any]],
    *,
    indexed_upto: int | None = None,
    max_problems: int = 20,
) -> IndexCheck:
    """Compare the auditors' index with the chained events (``read_events`` of the log).

    Every chained event up to ``indexed_upto`` (the index's shipping cursor;
    default: the highest position in the index) must be indexed with the same
    columns and record -- auditors' searches and the recording-access check read
    these columns.  A missing row is accepted only when an
    ``audit.retention_deleted`` event in the chain announced the deletion of
    events older than it.  An indexed row that is not the chained event at its
    position, or carries no position, is a failure.
    """
    t = events_table.c
    cols = [c for c in events_table.columns if c.name != "id"]
    problems: list[str] = []
    with index.engine.connect() as conn:
        top = int(conn.scalar(select(func.max(t.ChainSeq))) or 0)
        stray = int(
            conn.scalar(select(func.count()).select_from(events_table).where(t.ChainSeq.is_(None)))
            or 0
        )
        if stray:
            problems.append(f"{stray} indexed events carry no chain position: not from the log")
        upto = top if indexed_upto is None else indexed_upto
        rows = conn.execution_options(yield_per=1000).execute(
            select(*cols).where(t.ChainSeq.is_not(None)).order_by(t.ChainSeq, t.id)
        )
        row_iter = iter(rows)
        row = next(row_iter, None)
        compared = retired = last = 0
        missing: list[tuple[int, str]] = []
        cutoffs: list[str] = []
        for record in chain:
            seq = int(record["ChainSeq"])
            last = seq
            if record.get("EventType") == "audit.retention_deleted":
                details = record.get("Details") or {}
                if details.get("kind") == "events" and details.get("before"):
                    cutoffs.append(str(details["before"]))
            while row is not None and row.ChainSeq < seq:
                problems.append(
                    f"index row at position {row.ChainSeq} ({row.EventUid}) is "
                    "not the chained event there: inserted or duplicated"
                )
                row = next(row_iter, None)
            if row is not None and row.ChainSeq == seq:
                want = _expected(record)
                got = dict(row._mapping)
                got["record"] = json.loads(got["record"])
                if got != want:
                    diff = sorted(k for k in want if got.get(k) != want[k])
                    problems.append(
                        f"index row at position {seq} ({row.EventUid}) differs "
                        f"from the chain in {', '.join(diff)}: edited"
                    )
                compared += 1
                row = next(row_iter, None)
            elif seq <= upto:
                missing.append((seq, str(record.get("TimeGenerated", ""))))
            if len(problems) >= max_problems:
                break
        while row is not None and len(problems) < max_problems:
            problems.append(
                f"index row at position {row.ChainSeq} ({row.EventUid}) is beyond "
                f"the end of the chain ({last}): not from this log"
            )
            row = next(row_iter, None)
    newest_cut = max(cutoffs, default="")
    for seq, time in missing:
        if time and time < newest_cut:
            retired += 1
        elif len(problems) < max_problems:
            problems.append(f"chained event at position {seq} is missing from the index: deleted")
    return IndexCheck(not problems, compared, upto, retired, tuple(problems))


class IndexSink:
    """The index as a shipping sink: acknowledged once the rows are committed."""

    def __init__(self, index: AuditIndex, name: str = "index") -> None:
        self.index = index
        self.name = name

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from audit.outbox import SinkError

        try:
            self.index.add(records)
        except SQLAlchemyError as exc:
            raise SinkError(f"index database: {type(exc).__name__}: {exc}"[:500]) from exc

    def close(self) -> None:
        return None
