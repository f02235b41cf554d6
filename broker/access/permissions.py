"""Who may call what: one table, mirrored in ``docs/permissions.md``.

:data:`PERMISSIONS` maps each action (one per API endpoint, live-session and
certificate routes included, and one per SSH path: :data:`SSH_ACTIONS`) to the
roles that may perform it, the kinds of organisation whose people may use those
roles for it, and the token scope it needs.  Deny by default: an action not in
the table is refused.  Every route asks :func:`authorize` through
``broker.api.deps.require``; a refusal raises :class:`PermissionDenied`, which
the API maps to 403 and a ``*.refused`` event (:func:`refusal_event`) in one
place.  The SSH front door asks :func:`role_allows` at sign-in
(``StoreAccessPolicy.engineer_for_key``) and for every channel
(``Channels.authorize``); its refusals are ``session.refused``,
``forward.refused`` or ``file.refused`` events.

The table answers "may this role ever do this"; the record-level functions
below it (and the services) then narrow it to the caller's own organisation:
which hospital's events, recordings, reports and live sessions a caller sees,
which organisations and source networks.

Scopes: bearer tokens from a password+TOTP login carry ``*``; API tokens for
automation carry a subset of :data:`SCOPES`; a login before TOTP enrolment
carries only ``enroll``.  :data:`MFA` is stricter than any scope: only a
``*`` token of kind ``session`` (a full password+TOTP sign-in) has it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from broker.access.errors import PermissionDenied
from broker.access.model import Org, OrgKind, Role

E, A, H, U, P, V = (
    Role.ENGINEER,
    Role.APPROVER,
    Role.HOSPITAL_ADMIN,
    Role.AUDITOR,
    Role.PLATFORM_ADMIN,
    Role.VENDOR_ADMIN,
)
ALL = frozenset(Role)
ANY = "any"  # scope needed by self-service actions any token may do
MFA = "mfa"  # only a full password+TOTP session token
ANY_ORG = frozenset(OrgKind)
HOSPITAL_OR_PLATFORM = frozenset({OrgKind.HOSPITAL, OrgKind.PLATFORM})
PLATFORM = frozenset({OrgKind.PLATFORM})
HOSPITAL = frozenset({OrgKind.HOSPITAL})

SCOPES: tuple[str, ...] = ("read", "requests", "decisions", "admin")
ENROLMENT_ACTIONS = frozenset({"totp.enroll", "me.show", "auth.logout"})


class Principal(Protocol):
    """What a permission check needs of the caller (``broker.access.ports.Actor``)."""

    @property
    def user_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def org_id(self) -> str: ...
    @property
    def org_kind(self) -> str: ...
    @property
    def roles(self) -> frozenset[str]: ...
    @property
    def scopes(self) -> frozenset[str]: ...
    @property
    def token_kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Permission:
    roles: frozenset[Role]
    scope: str
    orgs: frozenset[OrgKind] = ANY_ORG


def _p(scope: str, *roles: Role, orgs: frozenset[OrgKind] = ANY_ORG) -> Permission:
    return Permission(frozenset(roles), scope, orgs)


PERMISSIONS: dict[str, Permission] = {
    # self service
    "me.show": Permission(ALL, ANY),
    "me.password": Permission(ALL, ANY),
    "me.instruments": Permission(ALL, "read"),
    "auth.logout": Permission(ALL, ANY),
    "totp.enroll": Permission(ALL, ANY),
    "keys.list": _p("read", E),
    "keys.add": _p("requests", E),
    "keys.revoke": _p("requests", E),
    "tokens.list": Permission(ALL, "read"),
    "tokens.create": Permission(ALL, "admin"),
    "tokens.revoke": Permission(ALL, "admin"),
    # organisations and people
    "orgs.list": Permission(ALL, "read"),
    "orgs.create": _p("admin", P),
    "orgs.update": _p("admin", P),
    "users.list": _p("read", H, U, P),
    "users.show": _p("read", H, U, P),
    "users.create": _p("admin", H, P),
    "users.expire": _p("admin", H, P),
    "users.deactivate": _p("admin", H, P),
    "users.recertify": _p("admin", H, P),
    "users.reset_totp": _p("admin", H, P),
    "users.set_password": _p("admin", H, P),
    "users.revoke_tokens": _p("admin", H, P),
    "users.add_key": _p("admin", P),
    "vendor_accounts.list": _p("read", A, H, U, P),
    # contracts, policies, instruments, gateways
    "contracts.list": Permission(ALL, "read"),
    "contracts.create": _p("admin", H, P),
    "contracts.end": _p("admin", H, P),
    "policies.show": Permission(ALL, "read"),
    "policies.update": _p("admin", H, P),
    # each organisation's notification channels (broker/api/routes/notifications.py):
    # a hospital's admin or a vendor's admin their own organisation's, platform admins any
    "notifications.show": _p("read", H, V, P),
    "notifications.update": _p("admin", H, V, P),
    "instruments.list": Permission(ALL, "read"),
    "instruments.show": Permission(ALL, "read"),
    "instruments.create": _p("admin", H, P),
    "instruments.update": _p("admin", H, P),
    "instruments.credential": _p("admin", H, P),
    "instruments.accept_host_key": _p("decisions", A, H),
    "gateways.list": _p("read", A, H, U, P),
    "gateways.token": _p("admin", H, P),
    "gateways.revoke": _p("admin", H, P),
    # requests, grants, emergencies
    "requests.create": _p("requests", E),
    "requests.list": Permission(ALL, "read"),
    "requests.show": Permission(ALL, "read"),
    "requests.approve": _p("decisions", A),
    "requests.deny": _p("decisions", A),
    "requests.cancel": _p("requests", E),
    "grants.list": Permission(ALL, "read"),
    "grants.revoke": _p("decisions", A, H, P),
    "grants.end": _p("requests", E),
    "emergency.start": _p("requests", E),
    "emergency.review": _p("decisions", A),
    # audit trail, recordings, work reports, reviews (routes/audit.py)
    "audit.search": _p("read", A, H, U, P, orgs=HOSPITAL_OR_PLATFORM),
    "audit.export": _p("read", A, H, U, P, orgs=HOSPITAL_OR_PLATFORM),
    "audit.sinks": _p("read", U, P, orgs=PLATFORM),
    "recordings.read": _p("read", A, U, orgs=HOSPITAL_OR_PLATFORM),
    "reports.show": _p("read", A, H, U, P, orgs=HOSPITAL_OR_PLATFORM),
    "reports.generate": _p("read", A, H, U, P, orgs=HOSPITAL_OR_PLATFORM),
    "reports.sign": _p("decisions", A),
    "reviews.show": _p("read", A, H, U, P, orgs=HOSPITAL_OR_PLATFORM),
    # live sessions (broker/api/routes/sessions.py): following a terminal is supervision
    "sessions.list": Permission(ALL, "read"),
    "sessions.follow": _p("decisions", A, H, P),
    "sessions.terminate": _p("decisions", A, H, P),
    # shell command lines held by a hold rule: seen as sessions are; allowed or refused
    # by an approver of the session's hospital only (broker.api.routes.holds)
    "commands.holds": Permission(ALL, "read"),
    "commands.release": _p("decisions", A, orgs=HOSPITAL),
    # web console pages (broker/console); its forms ask the API's actions above
    "console.inbox": _p("read", A, orgs=HOSPITAL),
    "console.grants": _p("read", A, H, P),
    "console.sessions": _p("read", A, H, P),
    "console.gateway": _p("read", A, H, P),
    "console.engineer": _p("read", E),  # my instruments, requests, keys, ssh_config
    "console.admin": _p("read", H, P),  # organisations, people, contracts, estate
    # the approver's emergency reviews, work reports and host keys (broker/console/approver.py)
    "console.emergencies": _p("read", A, orgs=HOSPITAL),
    "console.reports": _p("read", A, orgs=HOSPITAL),
    "console.host_keys": _p("read", A, H, orgs=HOSPITAL),
    "console.holds": _p("read", A, orgs=HOSPITAL),  # held commands (broker/console/holds.py)
    # the auditor's pages (broker/console/audit.py): then the API's audit actions too
    "console.audit": _p("read", U, orgs=HOSPITAL_OR_PLATFORM),
    "console.audit_export": _p("read", U, orgs=HOSPITAL_OR_PLATFORM),
    "console.recordings": _p("read", U, orgs=HOSPITAL_OR_PLATFORM),
    "console.audit_verify": _p("read", U, orgs=HOSPITAL_OR_PLATFORM),
    "console.audit_reports": _p("read", U, orgs=HOSPITAL_OR_PLATFORM),
    # SSH certificates (broker/api/routes/certs.py)
    "ssh.certificate": _p(MFA, E),
    # SSH paths at the front door (broker/frontdoor): asked with the person's roles
    # and organisation kind; MFA is the key + TOTP (or certificate) sign-in
    "ssh.login": _p(MFA, E),
    "ssh.session": _p(MFA, E),
    "ssh.files": _p(MFA, E),
    "ssh.forward": _p(MFA, E),
    # a VNC desktop in the console (broker/console/desktop.py): a granted port, as ssh -L
    "desktop.open": _p(MFA, E),
    # the RDP drive of the engineer's own live desktop, from the desktop page
    "desktop.drive": _p(MFA, E),
}

# the actions the SSH front door asks (sign-in, shell/exec, sftp/scp, ssh -L)
SSH_ACTIONS = frozenset({"ssh.login", "ssh.session", "ssh.files", "ssh.forward"})


def role_allows(roles: Iterable[str], action: str, org_kind: str | None = None) -> bool:
    """A role the caller holds allows ``action`` (from an organisation of a kind it allows)."""
    perm = PERMISSIONS.get(action)
    if perm is None or (org_kind is not None and org_kind not in perm.orgs):
        return False
    return any(r in perm.roles for r in roles)


def scope_allows(scopes: Iterable[str], action: str, token_kind: str = "session") -> bool:  # noqa: S107
    perm = PERMISSIONS.get(action)
    if perm is None:
        return False
    scopes = frozenset(scopes)
    if perm.scope == MFA:
        return "*" in scopes and token_kind == "session"  # noqa: S105
    if "*" in scopes:
        return True
    if "enroll" in scopes:  # before TOTP enrolment: only finishing enrolment
        return action in ENROLMENT_ACTIONS
    return perm.scope == ANY or perm.scope in scopes


def authorize(caller: Principal, action: str) -> None:
    """Raise :class:`PermissionDenied` unless the token scope and a role allow ``action``.

    The scope is checked first: an enrolment-only or read-only token learns
    nothing about the roles behind it.
    """
    perm = PERMISSIONS.get(action)
    if perm is None:
        raise PermissionDenied(f"{action} is not in the permission table")
    if not scope_allows(caller.scopes, action, caller.token_kind):
        if perm.scope == MFA:
            raise PermissionDenied(
                "sign in with password and TOTP (hoshu login) first: "
                f"{action} needs a full MFA sign-in",
                code="mfa_required",
            )
        raise PermissionDenied(f"this token's scope does not allow {action}")
    if not role_allows(caller.roles, action, caller.org_kind):
        raise PermissionDenied(f"your roles do not allow {action}")


_REFUSAL_EVENTS: tuple[tuple[str, str], ...] = (
    ("requests.", "request.refused"),
    ("grants.", "request.refused"),
    ("emergency.", "request.refused"),
    ("recordings.", "recording.refused"),
    ("sessions.follow", "recording.refused"),
    ("ssh.", "ssh.cert_refused"),
    ("desktop.drive", "file.refused"),
    ("desktop.", "session.refused"),
)


def refusal_event(action: str) -> str:
    """The ``*.refused`` event type that records a refusal of ``action``."""
    for prefix, kind in _REFUSAL_EVENTS:
        if action.startswith(prefix):
            return kind
    return "admin.refused"


# --- record level: which hospital's records a permitted caller sees ---------------
# These run after authorize(): the table has already checked role, org kind and scope.


def hospital_scope(caller: Principal) -> tuple[str, ...] | None:
    """Audit trail, reports, reviews: None = every hospital; else only the caller's own."""
    if caller.org_kind == OrgKind.PLATFORM:
        return None
    if caller.org_kind == OrgKind.HOSPITAL:
        return (caller.org_id,)
    raise PermissionDenied("only auditors, approvers and administrators read the audit trail")


def may_read_recording(caller: Principal, hospital_id: str | None) -> bool:
    """Platform auditors read every recording; hospital staff only their hospital's."""
    if caller.org_kind == OrgKind.PLATFORM:
        return True
    return (
        caller.org_kind == OrgKind.HOSPITAL
        and hospital_id is not None
        and caller.org_id == hospital_id
    )


def check_report_signer(caller: Principal, hospital_id: str | None) -> None:
    """Only an approver of the report's own hospital signs it off."""
    if not (
        caller.org_kind == OrgKind.HOSPITAL
        and hospital_id is not None
        and caller.org_id == hospital_id
    ):
        raise PermissionDenied("only an approver of the hospital signs its work reports")


_SESSION_READERS_HOSPITAL = frozenset({A, H, U})
_SESSION_READERS_PLATFORM = frozenset({U, P})


def may_see_session(caller: Principal, hospital_id: str, user_id: str) -> bool:
    """Listing live sessions: platform staff see all, hospital staff their hospital's,
    anyone else (an engineer) only their own."""
    if caller.org_kind == OrgKind.PLATFORM and caller.roles & _SESSION_READERS_PLATFORM:
        return True
    if caller.org_kind == OrgKind.HOSPITAL and caller.roles & _SESSION_READERS_HOSPITAL:
        return caller.org_id == hospital_id
    return caller.user_id == user_id


def check_session_control(caller: Principal, hospital_id: str, action: str) -> None:
    """Following or terminating: platform admins any session, hospital staff their own."""
    if caller.org_kind == OrgKind.PLATFORM:
        return
    if caller.org_kind == OrgKind.HOSPITAL and hospital_id and caller.org_id == hospital_id:
        return
    verb = "follow" if action == "sessions.follow" else "terminate"
    raise PermissionDenied(f"only approvers of the session's hospital may {verb} it")


# --- organisations: who sees which, and whose source networks --------------------


def sees_source_networks(caller: Principal, org: Org) -> bool:
    """Source networks are for platform admins and the organisation's own admins."""
    return P in caller.roles or (H in caller.roles and caller.org_id == org.id)


def visible_orgs(caller: Principal, orgs: Iterable[Org], partners: set[str]) -> list[Org]:
    """``GET /v1/orgs``: platform staff see every organisation; anyone else their own and
    ``partners`` (a hospital: the vendors with an active contract there; a vendor: the
    hospitals it has an active contract at).  Networks are blanked where not allowed."""
    out: list[Org] = []
    for org in orgs:
        if (
            caller.org_kind != OrgKind.PLATFORM
            and org.id != caller.org_id
            and org.id not in partners
        ):
            continue
        out.append(org if sees_source_networks(caller, org) else replace(org, source_cidrs=[]))
    return out
