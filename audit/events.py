"""The audit event envelope and the one catalog of event types.

Every event hoshu writes is a flat record whose columns are declared once in
:data:`COLUMNS`.  Column names follow Microsoft Sentinel's normalization (ASIM:
Authentication, NetworkSession, AuditEvent) where such a field exists, so that
Sentinel can query them without parsers; hoshu's own columns (``HospitalId``,
``GrantId``, ...) are named in the same style.  Each event *type* is defined
once, as data, in :mod:`audit.catalog`; :func:`new_event` looks its type up
there and raises for a type that is not defined, or a column or detail key
that does not exist.

Classification says what a column may carry: ``public`` (safe anywhere),
``sensitive`` (personal or operational data: masked before it leaves the
broker where masking is configured) and ``secret`` (never written: the value
is replaced by ``[redacted]`` before the event exists).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from audit.catalog import Classification, Schema, event_type
from audit.errors import InvalidEvent


class Result(StrEnum):
    SUCCESS = "Success"
    FAILURE = "Failure"
    PARTIAL = "Partial"
    NA = "NA"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the event table (and of the Sentinel custom table)."""

    name: str
    type: str  # Log Analytics type: string, int, long, real, boolean, datetime, dynamic
    classification: Classification
    description: str
    asim: bool = False  # True when the name is an ASIM field


_P, _S = Classification.PUBLIC, Classification.SENSITIVE

COLUMNS: tuple[Column, ...] = (
    Column("TimeGenerated", "datetime", _P, "When the event happened (UTC)", True),
    Column("EventUid", "string", _P, "Stable unique id; sinks de-duplicate on it", True),
    Column("EventType", "string", _P, "hoshu event type from the catalog", True),
    Column("EventSchema", "string", _P, "ASIM schema the event follows", True),
    Column("EventSchemaVersion", "string", _P, "ASIM schema version", True),
    Column("EventResult", "string", _P, "Success, Failure, Partial or NA", True),
    Column("EventResultDetails", "string", _P, "Why: the reason for a failure or an end", True),
    Column("EventSeverity", "string", _P, "Informational, Low, Medium or High", True),
    Column("EventMessage", "string", _S, "One human-readable line", True),
    Column("EventProduct", "string", _P, "Always hoshu", True),
    Column("EventVendor", "string", _P, "Always hoshu", True),
    Column("EventProductVersion", "string", _P, "Version of the emitting component", True),
    Column("DvcHostname", "string", _P, "Component that wrote the event (broker, gateway)", True),
    Column("DvcRole", "string", _P, "broker or gateway", False),
    Column("ActorUsername", "string", _S, "Who acted (user name)", True),
    Column("ActorUserId", "string", _P, "Who acted (user id)", True),
    Column("ActorUserType", "string", _P, "engineer, approver, auditor, admin, service", True),
    Column("ActorOrganization", "string", _P, "Organisation of the actor", False),
    Column("SrcIpAddr", "string", _S, "Source address of the actor", True),
    Column("SrcPortNumber", "int", _P, "Source port", True),
    Column("TargetHostname", "string", _P, "Instrument name", True),
    Column("TargetIpAddr", "string", _P, "Instrument address inside the hospital", True),
    Column("TargetPortNumber", "int", _P, "Instrument port", True),
    Column("TargetUsername", "string", _S, "Account used on the target", True),
    Column("TargetSessionId", "string", _P, "hoshu session id", True),
    Column("NetworkApplicationProtocol", "string", _P, "ssh, sftp, scp, rdp, vnc, tcp", True),
    Column("NetworkDirection", "string", _P, "Inbound (into the hospital) or Outbound", True),
    Column("SrcBytes", "long", _P, "Bytes sent by the engineer side", True),
    Column("DstBytes", "long", _P, "Bytes sent by the instrument side", True),
    Column("NetworkDuration", "long", _P, "Duration in milliseconds", True),
    Column("Operation", "string", _P, "What was done (create, update, approve, ...)", True),
    Column("Object", "string", _S, "What it was done to", True),
    Column("ObjectType", "string", _P, "Kind of object (user, policy, instrument, ...)", True),
    Column("HospitalId", "string", _P, "Hospital the event concerns", False),
    Column("VendorId", "string", _P, "Vendor organisation the event concerns", False),
    Column("GatewayId", "string", _P, "Gateway the event concerns", False),
    Column("RequestId", "string", _P, "Access request id", False),
    Column("GrantId", "string", _P, "Grant id", False),
    Column("Emergency", "boolean", _P, "True for emergency (break-glass) access", False),
    Column("TargetFileName", "string", _S, "File moved", True),
    Column("TargetFileSize", "long", _P, "Size of the file moved", True),
    Column("TargetFileSHA256", "string", _P, "SHA-256 of the file moved", True),
    Column("RecordingSize", "long", _P, "Size of the session recording in bytes", False),
    Column("RecordingSHA256", "string", _P, "SHA-256 of the session recording", False),
    Column("Details", "dynamic", _S, "Type-specific fields declared in the catalog", False),
    Column("ChainSeq", "long", _P, "Position in the hash-chained log", False),
    Column("ChainHash", "string", _P, "Hash committing to this event and all before it", False),
)
COLUMN_NAMES: frozenset[str] = frozenset(c.name for c in COLUMNS)
_COLUMN_BY_NAME: Mapping[str, Column] = MappingProxyType({c.name: c for c in COLUMNS})
# Set by the emitter and the chain, never by a caller.
_MANAGED = frozenset(
    {
        "TimeGenerated",
        "EventUid",
        "EventType",
        "EventSchema",
        "EventSchemaVersion",
        "EventProduct",
        "EventVendor",
        "ChainSeq",
        "ChainHash",
    }
)
SCHEMA_VERSIONS: Mapping[Schema, str] = MappingProxyType(
    {
        Schema.AUTHENTICATION: "0.1.3",
        Schema.NETWORK_SESSION: "0.2.6",
        Schema.AUDIT_EVENT: "0.1.0",
    }
)
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event: a flat record of catalog columns (``Details`` holds the rest)."""

    record: Mapping[str, Any]

    @property
    def type(self) -> str:
        return str(self.record["EventType"])

    @property
    def uid(self) -> str:
        return str(self.record["EventUid"])

    @property
    def time(self) -> str:
        return str(self.record["TimeGenerated"])

    def get(self, column: str, default: Any = None) -> Any:
        return self.record.get(column, default)

    @property
    def details(self) -> Mapping[str, Any]:
        d = self.record.get("Details")
        return d if isinstance(d, Mapping) else {}

    def to_json(self) -> str:
        return json.dumps(self.record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    if t.tzinfo is None:
        raise InvalidEvent("event times must be timezone-aware (UTC)")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_event(
    type_: str,
    *,
    clock: Callable[[], datetime] = utc_now,
    uid: str | None = None,
    details: Mapping[str, Any] | None = None,
    **columns: Any,
) -> AuditEvent:
    """Build an event of a catalog type.

    Raises :class:`UnknownEventType` for a type not in the catalog and
    :class:`InvalidEvent` for an unknown column or detail key.  Detail keys
    classified ``secret`` are replaced by ``[redacted]``; ``None`` values are
    dropped.
    """
    spec = event_type(type_)  # one lookup in the read-only catalog, nothing copied
    record: dict[str, Any] = {
        "TimeGenerated": format_time(clock()),
        "EventUid": uid or str(uuid.uuid4()),
        "EventType": spec.name,
        "EventSchema": spec.schema.value,
        "EventSchemaVersion": SCHEMA_VERSIONS[spec.schema],
        "EventProduct": "hoshu",
        "EventVendor": "hoshu",
        "EventResult": Result.SUCCESS.value,
        "EventSeverity": spec.severity.value,
    }
    for name, value in columns.items():
        if name not in COLUMN_NAMES or name in _MANAGED or name == "Details":
            raise InvalidEvent(f"{type_}: unknown or managed column {name!r}")
        if value is None:
            continue
        if isinstance(value, StrEnum):
            value = value.value
        record[name] = value
    if details:
        clean: dict[str, Any] = {}
        for key, value in details.items():
            cls = spec.details.get(key)
            if cls is None:
                raise InvalidEvent(f"{type_}: detail {key!r} is not declared in the catalog")
            if value is None:
                continue
            clean[key] = REDACTED if cls is Classification.SECRET else value
        if clean:
            record["Details"] = clean
    return AuditEvent(record)


def column(name: str) -> Column:
    return _COLUMN_BY_NAME[name]
