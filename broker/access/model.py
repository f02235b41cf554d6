"""The control plane's entities: plain dataclasses, no persistence behaviour.

Every entity has a string ``id`` (uuid4 hex, injected) and only simple field
types (str, int, bool, aware datetimes, lists and dicts of those) so the store
can map them generically.  Nothing is ever deleted: objects are deactivated,
expired, revoked or ended, and each state change is kept in :class:`Transition`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class OrgKind(StrEnum):
    HOSPITAL = "hospital"
    VENDOR = "vendor"
    PLATFORM = "platform"


class Role(StrEnum):
    ENGINEER = "engineer"
    APPROVER = "approver"
    HOSPITAL_ADMIN = "hospital_admin"
    AUDITOR = "auditor"
    PLATFORM_ADMIN = "platform_admin"
    VENDOR_ADMIN = "vendor_admin"  # sets the vendor's own notifications


# Which organisation kinds may hold a role (one named person, one organisation).
ROLE_ORG_KINDS: dict[Role, frozenset[OrgKind]] = {
    Role.ENGINEER: frozenset({OrgKind.VENDOR}),
    Role.APPROVER: frozenset({OrgKind.HOSPITAL}),
    Role.HOSPITAL_ADMIN: frozenset({OrgKind.HOSPITAL}),
    Role.AUDITOR: frozenset({OrgKind.HOSPITAL, OrgKind.VENDOR, OrgKind.PLATFORM}),
    Role.PLATFORM_ADMIN: frozenset({OrgKind.PLATFORM}),
    Role.VENDOR_ADMIN: frozenset({OrgKind.VENDOR}),
}


class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class GrantStatus(StrEnum):
    APPROVED = "approved"  # issued, window not yet open
    ACTIVE = "active"
    ENDED = "ended"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass
class Org:
    id: str
    name: str
    kind: str
    created_at: datetime
    active: bool = True
    source_cidrs: list[str] = field(default_factory=list)  # vendors: allowed engineer sources


@dataclass
class User:
    id: str
    name: str  # login name, unique
    full_name: str  # the one named person behind the account
    org_id: str
    roles: list[str]
    created_at: datetime
    expires_at: datetime | None = None
    active: bool = True
    password_hash: str = ""
    totp_secret_enc: str = ""  # encrypted with the broker's secret key
    totp_enrolled: bool = False
    totp_last_step: int = 0
    locked_until: datetime | None = None
    recertified_at: datetime | None = None
    recertified_by: str | None = None
    email: str = ""
    # an admin set the password: the console asks for a new one before anything else
    password_change_required: bool = False


@dataclass
class SshKey:
    id: str
    user_id: str
    public_key: str  # "<type> <base64>" without comment
    fingerprint: str  # SHA256:...
    created_at: datetime
    comment: str = ""
    revoked_at: datetime | None = None


@dataclass
class AuthFailure:
    id: str
    user_id: str
    at: datetime
    kind: str  # password | totp


@dataclass
class Token:
    """A bearer access token (kind=session) or an API token (kind=api)."""

    id: str
    user_id: str
    token_hash: str  # sha256 hex of the secret token text
    kind: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime
    name: str = ""
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    stepped_up_at: datetime | None = None  # the last fresh TOTP under this token (step-up)


@dataclass
class Contract:
    id: str
    vendor_id: str
    hospital_id: str
    instruments: list[str]  # instrument names; ["*"] = every instrument of the hospital
    created_at: datetime
    created_by: str
    valid_until: datetime | None = None
    active: bool = True
    reference: str = ""


@dataclass
class Policy:
    id: str  # one per hospital: id == hospital id
    hospital_id: str
    updated_at: datetime
    max_duration_s: int = 4 * 3600
    approvals_required: int = 1
    critical_approvals_required: int = 2
    hours_start: str = ""  # "HH:MM" local time; empty = any time
    hours_end: str = ""
    timezone: str = "Asia/Tokyo"
    file_transfer_allowed: bool = False
    emergency_allowed: bool = False
    emergency_max_duration_s: int = 3600
    request_ttl_s: int = 7 * 24 * 3600  # pending requests expire after this
    # record what engineers type in shells (passwords at sudo prompts too); off:
    # the output, which shows the echoed commands, is recorded all the same
    record_input: bool = False
    # deny and hold rules for commands typed in shells (broker.access.commandrules)
    command_rules: list[dict[str, str]] = field(default_factory=list)
    # desktop sessions relay the clipboard (each transfer logged with size and SHA-256)
    clipboard_allowed: bool = False
    # RDP desktops get a drive of the broker's (rdpdr): each file put there or taken
    # from it is logged with size and SHA-256; files going in pass the scan hook
    drive_allowed: bool = False


@dataclass
class Instrument:
    id: str
    hospital_id: str
    name: str
    host: str
    created_at: datetime
    gateway_id: str | None = None
    ssh_port: int = 22
    ports: list[int] = field(default_factory=list)
    protocol: str = "ssh"
    # the keyboard a desktop (RDP) instrument is told the broker has (estate.KEYBOARD_LAYOUTS)
    keyboard_layout: str = "en-US"
    department: str = ""
    model: str = ""
    vendor: str = ""
    criticality: str = "normal"
    login_username: str = ""
    credential_enc: str = ""  # encrypted; never returned by the API
    credential_kind: str = ""  # password | private_key
    host_key_fingerprint: str | None = None
    pending_host_key_fingerprint: str | None = None  # set: sessions blocked
    reachable: bool | None = None
    last_seen_at: datetime | None = None
    active: bool = True


@dataclass
class Gateway:
    id: str
    hospital_id: str
    name: str
    public_key: str
    key_fingerprint: str
    enrolled_at: datetime
    version: str = ""
    active: bool = True
    last_inventory_at: datetime | None = None


@dataclass
class EnrolmentToken:
    id: str
    hospital_id: str
    secret_hash: str
    created_at: datetime
    expires_at: datetime
    created_by: str
    used_at: datetime | None = None
    gateway_id: str | None = None


@dataclass
class AccessRequest:
    id: str
    requester_id: str
    vendor_id: str
    hospital_id: str
    instruments: list[str]
    ports: list[int]
    file_transfer: bool
    reason: str
    ticket: str
    work_plan: str
    start_at: datetime | None  # None: as soon as approved
    duration_s: int
    created_at: datetime
    expires_at: datetime
    approvals_required: int
    status: str = RequestStatus.PENDING.value
    emergency: bool = False
    decided_at: datetime | None = None
    grant_id: str | None = None


@dataclass
class Decision:
    id: str
    request_id: str
    approver_id: str
    verdict: str  # approve | deny
    at: datetime
    comment: str = ""


@dataclass
class Grant:
    id: str
    request_id: str
    user_id: str
    hospital_id: str
    vendor_id: str
    instruments: list[str]
    ports: list[int]
    file_transfer: bool
    starts_at: datetime
    ends_at: datetime
    created_at: datetime
    status: str = GrantStatus.APPROVED.value
    emergency: bool = False
    ticket: str = ""
    closed_at: datetime | None = None
    closed_by: str | None = None
    review_verdict: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_comment: str = ""


@dataclass
class Transition:
    """One state change of a request or grant: the queryable history."""

    id: str
    subject_kind: str  # request | grant
    subject_id: str
    from_state: str
    to_state: str
    at: datetime
    actor_id: str | None = None
    comment: str = ""


@dataclass
class SshCert:
    """An SSH user certificate the broker's CA issued: the serial deny-list.

    Only recorded serials sign in, and only while ``revoked_at`` is unset; signing
    out, revoking the user's tokens or locking the account revoke them."""

    id: str
    user_id: str
    serial: int
    issued_at: datetime
    valid_until: datetime
    revoked_at: datetime | None = None
    revoked_reason: str = ""


ENTITY_TYPES: tuple[type, ...] = (
    Org,
    User,
    SshKey,
    AuthFailure,
    Token,
    Contract,
    Policy,
    Instrument,
    Gateway,
    EnrolmentToken,
    AccessRequest,
    Decision,
    Grant,
    Transition,
    SshCert,
)
