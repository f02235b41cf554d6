"""Request and response bodies.  Inputs refuse unknown fields (``extra="forbid"``)
and bound every string and list; outputs never carry secrets or hashes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Name = Annotated[str, Field(min_length=1, max_length=63)]
Text = Annotated[str, Field(max_length=2000)]
Port = Annotated[int, Field(ge=1, le=65535)]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- sign-in -----------------------------------------------------------------
class LoginIn(In):
    username: Name
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    totp_code: Annotated[str, Field(max_length=12)] | None = None


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105
    token_id: str
    expires_at: datetime
    scopes: list[str]
    totp_enrolment_required: bool = False


class TotpEnrollOut(BaseModel):
    otpauth_uri: str


class TotpConfirmIn(In):
    code: Annotated[str, Field(min_length=6, max_length=12)]


class PasswordIn(In):
    current: Annotated[str, Field(min_length=1, max_length=1024)]
    new: Annotated[str, Field(min_length=1, max_length=1024)]


class MeOut(BaseModel):
    id: str
    name: str
    full_name: str
    org_id: str
    org_kind: str
    roles: list[str]
    scopes: list[str]
    expires_at: datetime | None
    totp_enrolled: bool


class ApiTokenIn(In):
    name: Name
    scopes: Annotated[
        list[Literal["read", "requests", "decisions", "admin"]], Field(min_length=1, max_length=4)
    ]
    ttl_s: Annotated[int, Field(ge=60, le=365 * 86400)] = 30 * 86400


class ApiTokenOut(Out):
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


# --- organisations and people --------------------------------------------------
class OrgIn(In):
    name: Name
    kind: Literal["hospital", "vendor"]
    source_cidrs: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)] = []


class OrgPatch(In):
    source_cidrs: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)]


class OrgOut(Out):
    id: str
    name: str
    kind: str
    active: bool
    source_cidrs: list[str]
    created_at: datetime


class UserIn(In):
    name: Name
    full_name: Annotated[str, Field(min_length=1, max_length=200)]
    org: Name
    roles: Annotated[
        list[
            Literal[
                "engineer",
                "approver",
                "hospital_admin",
                "auditor",
                "platform_admin",
                "vendor_admin",
            ]
        ],
        Field(min_length=1, max_length=6),
    ]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    expires_at: AwareDatetime | None = None
    email: Annotated[str, Field(max_length=254)] = ""


class UserOut(Out):
    id: str
    name: str
    full_name: str
    org_id: str
    roles: list[str]
    active: bool
    expires_at: datetime | None
    totp_enrolled: bool
    locked_until: datetime | None
    recertified_at: datetime | None
    recertified_by: str | None
    created_at: datetime
    email: str


class ExpireIn(In):
    expires_at: AwareDatetime | None


class NewPasswordIn(In):
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class CommentIn(In):
    comment: Text = ""


class KeyIn(In):
    public_key: Annotated[str, Field(min_length=1, max_length=16384)]


class KeyOut(Out):
    id: str
    user_id: str
    fingerprint: str
    public_key: str
    comment: str
    created_at: datetime


# --- contracts, policies, instruments -----------------------------------------
class ContractIn(In):
    vendor: Name
    hospital: Name
    instruments: Annotated[
        list[Annotated[str, Field(max_length=63)]], Field(min_length=1, max_length=500)
    ]
    valid_until: AwareDatetime | None = None
    reference: Annotated[str, Field(max_length=200)] = ""


class ContractOut(Out):
    id: str
    vendor_id: str
    hospital_id: str
    instruments: list[str]
    valid_until: datetime | None
    active: bool
    reference: str
    created_at: datetime


class CommandRuleIn(In):
    """A deny or hold rule for shell commands (docs/auditor.md)."""

    action: Literal["deny", "hold"]
    pattern: Annotated[str, Field(min_length=1, max_length=500)]
    reason: Annotated[str, Field(max_length=200)] = ""
    instrument: Annotated[str, Field(max_length=200)] = ""
    department: Annotated[str, Field(max_length=200)] = ""


class PolicyPatch(In):
    max_duration_s: int | None = None
    approvals_required: int | None = None
    critical_approvals_required: int | None = None
    hours_start: Annotated[str, Field(max_length=5)] | None = None
    hours_end: Annotated[str, Field(max_length=5)] | None = None
    timezone: Annotated[str, Field(max_length=64)] | None = None
    file_transfer_allowed: bool | None = None
    emergency_allowed: bool | None = None
    emergency_max_duration_s: int | None = None
    request_ttl_s: int | None = None
    record_input: bool | None = None
    command_rules: Annotated[list[CommandRuleIn], Field(max_length=100)] | None = None
    clipboard_allowed: bool | None = None
    drive_allowed: bool | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude_none=True)


class PolicyOut(Out):
    hospital_id: str
    max_duration_s: int
    approvals_required: int
    critical_approvals_required: int
    hours_start: str
    hours_end: str
    timezone: str
    file_transfer_allowed: bool
    emergency_allowed: bool
    emergency_max_duration_s: int
    request_ttl_s: int
    record_input: bool
    command_rules: list[dict[str, str]] = []
    clipboard_allowed: bool = False
    drive_allowed: bool = False
    updated_at: datetime


class InstrumentPatch(In):
    host: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    gateway: Name | None = None
    ssh_port: Port | None = None
    ports: Annotated[list[Port], Field(max_length=64)] | None = None
    protocol: Annotated[str, Field(max_length=16)] | None = None
    keyboard_layout: Annotated[str, Field(max_length=16)] | None = None
    department: Annotated[str, Field(max_length=100)] | None = None
    model: Annotated[str, Field(max_length=100)] | None = None
    vendor: Annotated[str, Field(max_length=100)] | None = None
    criticality: Annotated[str, Field(max_length=16)] | None = None
    login_username: Annotated[str, Field(max_length=64)] | None = None
    active: bool | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude_none=True)


class InstrumentIn(InstrumentPatch):
    name: Name
    host: Annotated[str, Field(min_length=1, max_length=253)]
    hospital: Name | None = None


class InstrumentOut(Out):
    id: str
    hospital_id: str
    gateway_id: str | None
    name: str
    host: str
    ssh_port: int
    ports: list[int]
    protocol: str
    keyboard_layout: str = "en-US"
    department: str
    model: str
    vendor: str
    criticality: str
    login_username: str
    credential_set: bool
    credential_kind: str
    host_key_fingerprint: str | None
    pending_host_key_fingerprint: str | None
    reachable: bool | None
    last_seen_at: datetime | None
    active: bool


class MyInstrumentsOut(BaseModel):
    instruments: list[InstrumentOut]


class CredentialIn(In):
    kind: Literal["password", "private_key"]
    secret: Annotated[str, Field(min_length=1, max_length=16384)]
    username: Annotated[str, Field(max_length=64)] | None = None


class AcceptKeyIn(In):
    fingerprint: Annotated[str, Field(min_length=1, max_length=128)]


# --- gateways --------------------------------------------------------------------
class GatewayTokenIn(In):
    hospital: Name | None = None
    ttl_s: Annotated[int, Field(ge=60, le=7 * 86400)] = 3600


class GatewayTokenOut(BaseModel):
    token: str
    token_id: str
    hospital: str
    expires_at: datetime


class EnrollIn(In):
    token: Annotated[str, Field(min_length=1, max_length=512)]
    public_key: Annotated[str, Field(min_length=1, max_length=16384)]
    name: Name
    version: Annotated[str, Field(max_length=64)] = ""


class EnrollOut(Out):
    gateway_id: str
    hospital_id: str
    hospital: str
    broker_host_key: str
    tunnel_host: str
    tunnel_port: int
    protocol_version: int


class GatewayOut(Out):
    id: str
    hospital_id: str
    name: str
    key_fingerprint: str
    version: str
    active: bool
    enrolled_at: datetime
    last_inventory_at: datetime | None


# --- requests and grants ------------------------------------------------------------
class RequestIn(In):
    instruments: Annotated[list[Name], Field(min_length=1, max_length=20)]
    ports: Annotated[list[Port], Field(max_length=32)] = []
    file_transfer: bool = False
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    ticket: Annotated[str, Field(max_length=200)] = ""
    work_plan: Annotated[str, Field(max_length=20000)] = ""
    start_at: AwareDatetime | None = None
    duration_s: Annotated[int, Field(ge=60, le=30 * 86400)]


class RequestOut(Out):
    id: str
    requester_id: str
    requester: str = ""  # login name
    vendor_id: str
    hospital_id: str
    instruments: list[str]
    ports: list[int]
    file_transfer: bool
    reason: str
    ticket: str
    work_plan: str
    start_at: datetime | None
    duration_s: int
    created_at: datetime
    expires_at: datetime
    approvals_required: int
    status: str
    emergency: bool
    decided_at: datetime | None
    grant_id: str | None


class DecisionOut(Out):
    approver_id: str
    approver: str = ""
    verdict: str
    at: datetime
    comment: str


class TransitionOut(Out):
    subject_kind: str
    subject_id: str
    from_state: str
    to_state: str
    at: datetime
    actor_id: str | None
    actor: str = ""  # login name; empty for hoshu's own clock
    comment: str


class GrantOut(Out):
    id: str
    request_id: str
    user_id: str
    user: str = ""
    hospital_id: str
    vendor_id: str
    instruments: list[str]
    ports: list[int]
    file_transfer: bool
    starts_at: datetime
    ends_at: datetime
    status: str
    emergency: bool
    ticket: str
    closed_at: datetime | None
    closed_by: str | None
    review_verdict: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None


class RequestDetail(BaseModel):
    request: RequestOut
    decisions: list[DecisionOut]
    history: list[TransitionOut]
    grant: GrantOut | None


class ReviewIn(In):
    verdict: Literal["accepted", "rejected"]
    comment: Text = ""
