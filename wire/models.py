"""Frozen message models of the control channel, and the records both sides share.

Every message is one JSON object with a ``type`` field; unknown fields are
refused (``extra="forbid"``), so a typo is an error rather than a silent
default.  Times are timezone-aware ISO-8601.  Sequences are bounded so a
peer cannot make the other side allocate without limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    model_validator,
)

from wire.names import MAX_AUDIT_BATCH, MAX_INSTRUMENTS, MAX_WINDOWS, Mode, Purpose

_Name = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,63}$")]
_Port = Annotated[int, Field(ge=1, le=65535)]
_Text = Annotated[str, Field(max_length=256)]


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    """An active, enrolled gateway as the broker's directory knows it."""

    gateway_id: str
    hospital_id: str
    name: str


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """One instrument a gateway exposes, as last probed by that gateway.

    The one inventory row: the gateway's prober returns it and the broker records it
    (``GatewayService.record_inventory``).  On the control channel it travels as
    :class:`InventoryEntry`, its validated message form.
    """

    name: str
    host: str
    ports: tuple[int, ...]
    protocol: str
    department: str
    model: str
    reachable: bool
    host_key_fingerprint: str | None  # "SHA256:..." for SSH instruments that answered


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class InventoryEntry(_Model):
    """Wire form of :class:`InventoryItem` (validated; convert with ``to_item``)."""

    name: _Name
    host: Annotated[str, Field(min_length=1, max_length=253)]
    ports: Annotated[tuple[_Port, ...], Field(min_length=1, max_length=64)]
    protocol: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,16}$")]
    department: _Text = ""
    model: _Text = ""
    reachable: bool
    host_key_fingerprint: Annotated[str, Field(max_length=128)] | None = None

    def to_item(self) -> InventoryItem:
        return InventoryItem(
            self.name,
            self.host,
            self.ports,
            self.protocol,
            self.department,
            self.model,
            self.reachable,
            self.host_key_fingerprint,
        )

    @classmethod
    def from_item(cls, item: InventoryItem) -> InventoryEntry:
        return cls(
            name=item.name,
            host=item.host,
            ports=item.ports,
            protocol=item.protocol,
            department=item.department,
            model=item.model,
            reachable=item.reachable,
            host_key_fingerprint=item.host_key_fingerprint,
        )


class Window(_Model):
    """An approved grant window touching the gateway's instruments: [start, end)."""

    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end <= self.start:
            raise ValueError("a window must end after it starts")
        return self


# --- gateway -> broker --------------------------------------------------------


class Hello(_Model):
    """First message of the gateway on the control channel."""

    type: Literal["hello"] = "hello"
    protocol: Annotated[int, Field(ge=1)]
    gateway_version: Annotated[str, Field(max_length=64)]
    mode: Mode
    purpose: Purpose
    gateway_time: AwareDatetime
    # protocol 2: this agent run (random per start) and which of its tunnels this is, so a
    # replica can tell a second tunnel of the same run (refused) from a redial (replaces)
    instance: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None
    slot: Annotated[int | None, Field(ge=0, le=63)] = None


class Inventory(_Model):
    """The gateway's instruments and their reachability."""

    type: Literal["inventory"] = "inventory"
    instruments: Annotated[tuple[InventoryEntry, ...], Field(max_length=MAX_INSTRUMENTS)]


class AuditBatch(_Model):
    """Local audit events, in chain order; the broker answers with :class:`Ack`."""

    type: Literal["audit"] = "audit"
    events: Annotated[
        tuple[dict[str, JsonValue], ...], Field(min_length=1, max_length=MAX_AUDIT_BATCH)
    ]


# --- broker -> gateway --------------------------------------------------------


class Welcome(_Model):
    """The broker's answer to :class:`Hello`."""

    type: Literal["welcome"] = "welcome"
    protocol: Annotated[int, Field(ge=1)]
    broker_version: Annotated[str, Field(max_length=64)]
    gateway_id: Annotated[str, Field(max_length=64)]
    broker_time: AwareDatetime


class Placement(_Model):
    """Protocol 2, after :class:`Welcome`: which broker replica this tunnel reached."""

    type: Literal["placement"] = "placement"
    replica: Annotated[str, Field(min_length=1, max_length=64)]


class Windows(_Model):
    """Current and upcoming approved windows (replaces what the gateway knew)."""

    type: Literal["windows"] = "windows"
    windows: Annotated[tuple[Window, ...], Field(max_length=MAX_WINDOWS)]


class Ack(_Model):
    """Audit events stored by the broker, up to and including this ``ChainSeq``."""

    type: Literal["ack"] = "ack"
    upto_seq: Annotated[int, Field(ge=0)]


# --- both ways ---------------------------------------------------------------


class Heartbeat(_Model):
    type: Literal["heartbeat"] = "heartbeat"
    seq: Annotated[int, Field(ge=0)]
    sent_at: AwareDatetime


class Bye(_Model):
    """The sender is about to close the connection, and why."""

    type: Literal["bye"] = "bye"
    reason: _Text


class ErrorMessage(_Model):
    """The sender refused the last message (or the connection); ``code`` is snake_case."""

    type: Literal["error"] = "error"
    code: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")]
    message: _Text


Message = (
    Hello
    | Inventory
    | AuditBatch
    | Welcome
    | Placement
    | Windows
    | Ack
    | Heartbeat
    | Bye
    | ErrorMessage
)
MESSAGE_TYPES: dict[str, type[BaseModel]] = {
    "hello": Hello,
    "inventory": Inventory,
    "audit": AuditBatch,
    "welcome": Welcome,
    "placement": Placement,
    "windows": Windows,
    "ack": Ack,
    "heartbeat": Heartbeat,
    "bye": Bye,
    "error": ErrorMessage,
}
MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Annotated[Message, Field(discriminator="type")])
