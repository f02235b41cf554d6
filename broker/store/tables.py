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
