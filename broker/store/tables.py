"""Tables: one per entity of :mod:`broker.access.model`, columns from its fields.

Column types follow the dataclass annotations (str → text, int, bool, aware
datetime → ``UTCDateTime``, lists and dicts → JSON), so entity and table cannot
drift; the migrations in ``migrations/versions`` freeze each revision, and a
test checks the migrated schema equals this metadata.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from broker.access import model as m


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TABLE_NAMES: dict[type, str] = {
    m.Org: "orgs",
    m.User: "users",
    m.SshKey: "ssh_keys",
    m.AuthFailure: "auth_failures",
    m.Token: "tokens",
    m.Contract: "contracts",
    m.Policy: "policies",
    m.Instrument: "instruments",
    m.Gateway: "gateways",
    m.EnrolmentToken: "enrolment_tokens",
    m.AccessRequest: "access_requests",
    m.Decision: "decisions",
    m.Grant: "grants",
    m.Transition: "transitions",
    m.SshCert: "ssh_certs",
}
UNIQUE: dict[type, list[str]] = {
    m.Org: ["name"],
    m.User: ["name"],
    m.Token: ["token_hash"],
    m.Instrument: ["name"],
    m.Gateway: ["name"],
}
INDEXES: dict[type, list[tuple[str, ...]]] = {
    m.User: [("org_id",)],
    m.SshKey: [("user_id",), ("fingerprint",)],
    m.AuthFailure: [("user_id", "at")],
    m.Token: [("user_id",)],
    m.Contract: [("hospital_id",), ("vendor_id", "hospital_id")],
    m.Instrument: [("hospital_id",)],
    m.Gateway: [("hospital_id",), ("key_fingerprint",)],
    m.EnrolmentToken: [("hospital_id",)],
    m.AccessRequest: [
        ("requester_id",),
        ("hospital_id", "status"),
        ("status", "expires_at"),
        ("vendor_id",),
    ],
    m.Decision: [("request_id",)],
    m.Grant: [("user_id", "status"), ("hospital_id",), ("status",), ("vendor_id",)],
    m.Transition: [("subject_kind", "subject_id")],
    m.SshCert: [("user_id",), ("serial",)],
}


def _column_type(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    nullable = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args and nullable else hint
    origin = typing.get_origin(base)
    if origin in (list, dict):
        return sa.JSON(), nullable
    if base is bool:
        return sa.Boolean(), nullable
    if base is int:
        return sa.BigInteger(), nullable
    if base is datetime:
        return UTCDateTime(), nullable
    if base is str:
        return sa.Text(), nullable
    raise TypeError(f"no column type for {hint!r}")


def _table(kind: type) -> sa.Table:
    hints = typing.get_type_hints(kind)
    cols: list[Any] = []
    for f in dataclasses.fields(kind):
        sa_type, nullable = _column_type(hints[f.name])
        if f.name == "id":
            cols.append(sa.Column("id", sa.String(64), primary_key=True))
        else:
            cols.append(sa.Column(f.name, sa_type, nullable=nullable))
    name = TABLE_NAMES[kind]
    for col in UNIQUE.get(kind, []):
        cols.append(sa.UniqueConstraint(col))
    for idx in INDEXES.get(kind, []):
        cols.append(sa.Index(f"ix_{name}_{'_'.join(idx)}", *idx))
    return sa.Table(name, metadata, *cols)


TABLES: dict[type, sa.Table] = {kind: _table(kind) for kind in m.ENTITY_TYPES}

# Several broker replicas (broker.tunnel.cluster): not entities of the access domain, so
# declared here by hand.  A replica's row pins its peer-link key; a tunnel row says which
# replica holds a gateway's tunnel, under the epoch (a random nonce per connection) that
# alone may refresh or delete it.
REPLICAS = sa.Table(
    "broker_replicas",
    metadata,
    sa.Column("replica_id", sa.String(64), primary_key=True),
    sa.Column("peer_host", sa.Text(), nullable=False),
    sa.Column("peer_port", sa.BigInteger(), nullable=False),
    sa.Column("peer_key", sa.Text(), nullable=False),  # OpenSSH public key line, pinned
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen", UTCDateTime(), nullable=False),
)
GATEWAY_TUNNELS = sa.Table(
    "gateway_tunnels",
    metadata,
    sa.Column("gateway_id", sa.String(64), primary_key=True),
    sa.Column("replica_id", sa.String(64), primary_key=True),
    sa.Column("epoch", sa.String(64), nullable=False),
    sa.Column("beat", sa.BigInteger(), nullable=False),
    sa.Column("connected_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen", UTCDateTime(), nullable=False),
    sa.Index("ix_gateway_tunnels_replica_id", "replica_id"),
)

# The change feed (broker.live.changes): one row whose version every committed change that
# can end a live session bumps in its own transaction; singleton jobs (broker.jobs): one row
# per job and period, so a period's run is claimed exactly once across replicas.
CHANGE_FEED = sa.Table(
    "change_feed",
    metadata,
    sa.Column("id", sa.BigInteger(), primary_key=True),
    sa.Column("version", sa.BigInteger(), nullable=False),
)
JOB_RUNS = sa.Table(
    "job_runs",
    metadata,
    sa.Column("job", sa.String(64), primary_key=True),
    sa.Column("period", sa.BigInteger(), primary_key=True),
    sa.Column("replica_id", sa.String(64), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("outcome", sa.Text(), nullable=True),
)

# Live sessions of every replica (broker.live.directory): one row per running session,
# written by the replica that runs it and deleted once its session.ended is in the audit
# log; another replica reads it to list, follow (the recording) and terminate the session
# (a request the owner picks up) and ends the sessions of a replica that died.
LIVE_SESSIONS = sa.Table(
    "live_sessions",
    metadata,
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("replica_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("username", sa.Text(), nullable=False),
    sa.Column("hospital_id", sa.String(64), nullable=False),
    sa.Column("gateway_id", sa.String(64), nullable=True),
    sa.Column("instrument", sa.Text(), nullable=False),
    sa.Column("port", sa.BigInteger(), nullable=False),
    sa.Column("grant_id", sa.String(64), nullable=False),
    sa.Column("src", sa.Text(), nullable=False),
    sa.Column("started", UTCDateTime(), nullable=False),
    sa.Column("grant_ends", UTCDateTime(), nullable=True),
    sa.Column("recording", sa.Text(), nullable=False),  # name in the recording store
    sa.Column("recording_location", sa.Text(), nullable=False),
    sa.Column("columns", sa.JSON(), nullable=False),  # the session's audit columns
    sa.Column("state", sa.String(16), nullable=False),  # live, ending, reaping
    sa.Column("reaper", sa.String(64), nullable=False),  # who is ending it ('' none)
    sa.Column("terminate_by", sa.Text(), nullable=True),
    sa.Column("terminate_reason", sa.String(64), nullable=True),
    sa.Column("terminate_at", UTCDateTime(), nullable=True),
    sa.Column("updated", UTCDateTime(), nullable=False),
    sa.Index("ix_live_sessions_replica_id", "replica_id"),
)

# Held shell command lines (broker.live.clusterholds), with several replicas: the owner
# of the session writes the row when a line is held; any replica answers it by a
# conditional update of ``state`` (waiting -> allowed/refused: the first answer wins);
# the owner turns a line no one answered in time into timed_out.  An answered row
# stays a few minutes (a late answer is told it came too late), then goes.
COMMAND_HOLDS = sa.Table(
    "command_holds",
    metadata,
    sa.Column("hold_id", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(128), nullable=False),
    sa.Column("replica_id", sa.String(64), nullable=False),  # the replica running it
    sa.Column("hospital_id", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),  # the engineer
    sa.Column("username", sa.Text(), nullable=False),
    sa.Column("instrument", sa.Text(), nullable=False),
    sa.Column("command", sa.Text(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("pattern", sa.Text(), nullable=False),
    sa.Column("held_at", UTCDateTime(), nullable=False),
    sa.Column("deadline", UTCDateTime(), nullable=False),
    # waiting, allowed, refused, timed_out, session_ended
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("answered_by", sa.Text(), nullable=True),
    sa.Column("answered_at", UTCDateTime(), nullable=True),
    sa.Index("ix_command_holds_state", "state"),
    sa.Index("ix_command_holds_replica_id", "replica_id"),
)

# Notifications (broker.console.notify): the durable outbox, one row per message and
# channel, written right after the audit log took the event; a delivery worker on any
# replica claims a due row with a conditional update (claimed_until), sends it, marks it
# sent or schedules the next attempt.  ``dedupe`` makes a message once per event,
# channel and recipients.  Each organisation's channels and recipients: one row each.
NOTIFICATION_OUTBOX = sa.Table(
    "notification_outbox",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("dedupe", sa.String(200), nullable=False, unique=True),
    sa.Column("kind", sa.String(64), nullable=False),  # the event type it tells of
    sa.Column("org_id", sa.String(64), nullable=False),  # whose channels it goes through
    sa.Column("channel", sa.String(16), nullable=False),  # email, teams, webhook
    sa.Column("target", sa.JSON(), nullable=False),  # addresses, or the webhook URL
    sa.Column("payload", sa.JSON(), nullable=False),  # subject, text, link, facts
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("attempts", sa.BigInteger(), nullable=False),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_until", UTCDateTime(), nullable=True),
    sa.Column("sent_at", UTCDateTime(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Index("ix_notification_outbox_due", "sent_at", "next_attempt_at"),
)
NOTIFICATION_SETTINGS = sa.Table(
    "notification_settings",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("email", sa.Boolean(), nullable=False),  # mail the people whose role it is
    sa.Column("emails", sa.JSON(), nullable=False),  # further addresses (a shared mailbox)
    sa.Column("teams_url", sa.Text(), nullable=False),  # Teams incoming webhook ('' none)
    sa.Column("webhook_url", sa.Text(), nullable=False),  # signed JSON webhook ('' none)
    sa.Column("kinds", sa.JSON(), nullable=True),  # what it is told of (NULL: the defaults)
    sa.Column("webhook_secret", sa.Text(), nullable=False),  # its HMAC key, sealed ('' none)
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)
