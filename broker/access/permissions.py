"""Who may call what: one table, mirrored in ``docs/permissions.md``.

:data:`PERMISSIONS` maps each action (one per API endpoint) to the roles that
may perform it and the token scope it needs.  Deny by default: an action not in
the table is refused.  The table answers "may this role ever do this"; the
services then narrow it to the caller's own organisation (an approver decides
only for their hospital, an engineer sees only their own requests, ...).

Scopes: bearer tokens from a password+TOTP login carry ``*``; API tokens for
automation carry a subset of :data:`SCOPES`; a login before TOTP enrolment
carries only ``enroll``.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.access.errors import PermissionDenied
from broker.access.model import Role

E, A, H, U, P = (Role.ENGINEER, Role.APPROVER, Role.HOSPITAL_ADMIN, Role.AUDITOR,
                 Role.PLATFORM_ADMIN)
ALL = frozenset(Role)
ANY = "any"  # scope needed by self-service actions any token may do

SCOPES: tuple[str, ...] = ("read", "requests", "decisions", "admin")


@dataclass(frozen=True, slots=True)
class Permission:
    roles: frozenset[Role]
    scope: str


def _p(scope: str, *roles: Role) -> Permission:
    return Permission(frozenset(roles), scope)


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
    "users.add_key": _p("admin", P),
    "vendor_accounts.list": _p("read", A, H, U, P),
    # contracts, policies, instruments, gateways
    "contracts.list": Permission(ALL, "read"),
    "contracts.create": _p("admin", H, P),
    "contracts.end": _p("admin", H, P),
    "policies.show": Permission(ALL, "read"),
    "policies.update": _p("admin", H, P),
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
}


def role_allows(roles: frozenset[str] | set[str], action: str) -> bool:
    perm = PERMISSIONS.get(action)
    return perm is not None and any(r in perm.roles for r in roles)


def scope_allows(scopes: frozenset[str] | set[str], action: str) -> bool:
    perm = PERMISSIONS.get(action)
    if perm is None:
        return False
    if "*" in scopes:
        return True
    if "enroll" in scopes:  # before TOTP enrolment: only finishing enrolment
        return action in {"totp.enroll", "me.show", "auth.logout"}
    return perm.scope == ANY or perm.scope in scopes


def authorize(roles: frozenset[str], scopes: frozenset[str], action: str) -> None:
    """Raise :class:`PermissionDenied` unless a role and the token scope allow ``action``."""
    if not scope_allows(scopes, action):
        raise PermissionDenied(f"this token's scope does not allow {action}")
    if not role_allows(roles, action):
        raise PermissionDenied(f"your roles do not allow {action}")
