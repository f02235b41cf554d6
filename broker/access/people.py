"""Organisations, people, their SSH keys, expiry and recertification.

Scoping: a platform admin sees and manages everyone.  A hospital admin manages
the accounts of their own hospital and recertifies every vendor account that
can reach it (through an active contract).  Auditors and approvers see their
own organisation's accounts and the vendor accounts reaching their hospital.
Anything outside the caller's scope is reported as not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.access import credentials, names, passwords, sshkeys
from broker.access.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from broker.access.model import ROLE_ORG_KINDS, Contract, Org, OrgKind, Role, SshKey, User
from broker.access.permissions import visible_orgs
from broker.access.ports import Actor, Context, Tx

DEFAULT_VENDOR_EXPIRY = timedelta(days=365)
HOSPITAL_MANAGED_ROLES = frozenset({Role.APPROVER, Role.HOSPITAL_ADMIN, Role.AUDITOR})


def is_platform(actor: Actor) -> bool:
    return Role.PLATFORM_ADMIN in actor.roles


def sees_all(actor: Actor) -> bool:
    """Platform staff (admins and auditors) read every organisation's records."""
    return actor.org_kind == OrgKind.PLATFORM or is_platform(actor)


def find_org(tx: Tx, ref: str) -> Org:
    org = tx.get(Org, ref) or tx.one(Org, name=ref)
    if org is None:
        raise NotFound(f"no organisation {ref!r}")
    return org


def vendors_reaching(tx: Tx, hospital_id: str, now: datetime) -> set[str]:
    return {
        c.vendor_id
        for c in tx.find(Contract, hospital_id=hospital_id, active=True)
        if c.valid_until is None or c.valid_until > now
    }


@dataclass(frozen=True, slots=True)
class NewUser:
    name: str
    full_name: str
    org: str
    roles: list[str]
    password: str
    expires_at: datetime | None = None
    email: str = ""


class PeopleService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- organisations -------------------------------------------------------
    def create_org(
        self, actor: Actor, name: str, kind: str, source_cidrs: list[str] | None = None
    ) -> Org:
        names.slug(name, "organisation name")
        if kind not in (OrgKind.HOSPITAL, OrgKind.VENDOR):
            raise InvalidInput("kind must be hospital or vendor")
        with self.ctx.uow() as tx:
            if tx.one(Org, name=name) is not None:
                raise Conflict(f"organisation {name!r} already exists")
            org = Org(
                self.ctx.new_id(),
                name,
                kind,
                self.ctx.now(),
                source_cidrs=names.networks(list(source_cidrs or [])),
            )
            tx.add(org)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="create",
                ObjectType="org",
                Object=name,
                HospitalId=org.id if kind == "hospital" else None,
                VendorId=org.id if kind == "vendor" else None,
                details={"changes": {"kind": kind, "source_cidrs": org.source_cidrs}},
            )
            return org

    def set_sources(self, actor: Actor, ref: str, source_cidrs: list[str]) -> Org:
        """Networks the organisation's people may sign in from (empty: anywhere)."""
        cidrs = names.networks(source_cidrs)
        with self.ctx.uow() as tx:
            org = find_org(tx, ref)
            org.source_cidrs = cidrs
            tx.save(org)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="update",
                ObjectType="org",
                Object=org.name,
                **_org_cols(org),
                details={"changes": {"source_cidrs": cidrs}},
            )
            return org

    def list_orgs(self, actor: Actor) -> list[Org]:
        """Visible organisations (:func:`broker.access.permissions.visible_orgs`)."""
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            if actor.org_kind == OrgKind.HOSPITAL:
                partners = vendors_reaching(tx, actor.org_id, now)
            else:  # a vendor: the hospitals it has an active contract at
                partners = {
                    c.hospital_id
                    for c in tx.find(Contract, vendor_id=actor.org_id, active=True)
                    if c.valid_until is None or c.valid_until > now
                }
            return visible_orgs(actor, tx.find(Org, order_by="name"), partners)

    # --- users -------------------------------------------------------------------
    def _visible(self, tx: Tx, actor: Actor, user: User) -> bool:
        if sees_all(actor) or user.org_id == actor.org_id or user.id == actor.user_id:
            return True
        if actor.org_kind == OrgKind.HOSPITAL:
            return user.org_id in vendors_reaching(tx, actor.org_id, self.ctx.now())
        return False

    def _get_user(self, tx: Tx, actor: Actor, ref: str) -> User:
        user = tx.get(User, ref) or tx.one(User, name=ref)
        if user is None or not self._visible(tx, actor, user):
            raise NotFound(f"no user {ref!r}")
        return user

    def _manageable(self, actor: Actor, user: User) -> None:
        if is_platform(actor):
            return
        if Role.HOSPITAL_ADMIN in actor.roles and user.org_id == actor.org_id:
            return
        raise PermissionDenied("you may only manage accounts of your own hospital")

    def create_user(self, actor: Actor, new: NewUser) -> User:
        names.username(new.name)
        if not new.full_name.strip():
            raise InvalidInput("a user is one named person: full_name is required")
        roles = sorted(set(new.roles))
        if not roles or any(r not in Role.__members__.values() for r in roles):
            raise InvalidInput(f"roles must be some of {', '.join(r.value for r in Role)}")
        passwords.check_policy(new.password, username=new.name)
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            org = find_org(tx, new.org)
            for r in roles:
                if org.kind not in ROLE_ORG_KINDS[Role(r)]:
                    raise InvalidInput(f"role {r} cannot be held in a {org.kind} organisation")
            if not is_platform(actor):
                if org.id != actor.org_id or not set(roles) <= HOSPITAL_MANAGED_ROLES:
                    raise PermissionDenied(
                        "hospital admins create approver, admin and auditor accounts of "
                        "their own hospital only"
                    )
            if tx.one(User, name=new.name) is not None:
                raise Conflict(f"user {new.name!r} already exists")
            expires = new.expires_at
            if expires is None and org.kind == OrgKind.VENDOR:
                expires = now + DEFAULT_VENDOR_EXPIRY
            if expires is not None and expires <= now:
                raise InvalidInput("expiry must be in the future")
            user = User(
                self.ctx.new_id(),
                new.name,
                new.full_name.strip(),
                org.id,
                roles,
                now,
                expires_at=expires,
                password_hash=self.ctx.hasher.hash(new.password),
                email=new.email,
            )
            tx.add(user)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="create",
                ObjectType="user",
                Object=user.name,
                **_org_cols(org),
                details={
                    "changes": {
                        "roles": roles,
                        "org": org.name,
                        "expires_at": expires.isoformat() if expires else None,
                    }
                },
            )
            return user

    def list_users(self, actor: Actor, org: str | None = None) -> list[User]:
        with self.ctx.uow() as tx:
            where: dict[str, Any] = {"org_id": find_org(tx, org).id} if org else {}
            return [
                u for u in tx.find(User, order_by="name", **where) if self._visible(tx, actor, u)
            ]

    def show_user(self, actor: Actor, ref: str) -> User:
        with self.ctx.uow() as tx:
            return self._get_user(tx, actor, ref)

    def names(self, user_ids: set[str]) -> dict[str, str]:
        """Login names for ids shown next to requests, decisions and grants."""
        if not user_ids:
            return {}
        with self.ctx.uow() as tx:
            return {u.id: u.name for u in tx.find(User, id=sorted(user_ids))}

    def org_of(self, org_id: str) -> Org | None:
        with self.ctx.uow() as tx:
            return tx.get(Org, org_id)

    def set_expiry(self, actor: Actor, ref: str, expires_at: datetime | None) -> User:
        with self.ctx.uow() as tx:
            user = self._get_user(tx, actor, ref)
            self._manageable(actor, user)
            user.expires_at = expires_at
            tx.save(user)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="expire",
                ObjectType="user",
                Object=user.name,
                details={"changes": {"expires_at": expires_at.isoformat() if expires_at else None}},
            )
            return user

    def deactivate(self, actor: Actor, ref: str) -> User:
        """Deactivation is immediate: tokens stop working and live sessions end."""
        with self.ctx.uow() as tx:
            user = self._get_user(tx, actor, ref)
            self._manageable(actor, user)
            if user.id == actor.user_id:
                raise Conflict("you cannot deactivate your own account")
            if not user.active:
                raise Conflict("account is already inactive")
            user.active = False
            tx.save(user)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="deactivate",
                ObjectType="user",
                Object=user.name,
                details={"changes": {"active": False}},
            )
            return user

    def reset_totp(self, actor: Actor, ref: str) -> User:
        """Lost authenticator: the person enrols again at their next sign-in; every
        token and SSH certificate issued under the old authenticator is revoked."""
        with self.ctx.uow() as tx:
            user = self._get_user(tx, actor, ref)
            self._manageable(actor, user)
            user.totp_enrolled = False
            user.totp_secret_enc = ""
            tx.save(user)
            self.ctx.emit(
                "admin.change", actor, Operation="reset_totp", ObjectType="user", Object=user.name
            )
            credentials.revoke_all(self.ctx, tx, actor, user, "totp reset")
            return user

    def set_password(self, actor: Actor, ref: str, password: str) -> User:
        """An admin sets a new password (policy-checked; the person should change it);
        every token and SSH certificate issued under the old one is revoked."""
        with self.ctx.uow() as tx:
            user = self._get_user(tx, actor, ref)
            self._manageable(actor, user)
            passwords.check_policy(password, username=user.name)
            user.password_hash = self.ctx.hasher.hash(password)
            user.password_change_required = True  # the person chooses their own next
            tx.save(user)
            self.ctx.emit(
                "admin.change", actor, Operation="set_password", ObjectType="user", Object=user.name
            )
            credentials.revoke_all(self.ctx, tx, actor, user, "password reset")
            return user

    def revoke_tokens(self, actor: Actor, ref: str) -> credentials.Revoked:
        """An admin ends every bearer token, API token and SSH certificate of a person
        they manage (a lost laptop, a leaver): each stops working at its next use."""
        with self.ctx.uow() as tx:
            user = self._get_user(tx, actor, ref)
            self._manageable(actor, user)
            return credentials.revoke_all(self.ctx, tx, actor, user, "revoked by an admin")

    def recertify(self, actor: Actor, ref: str, comment: str = "") -> User:
        """Confirm an account is still needed (periodic review, GUIDELINES control 6)."""
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            user = self._get_user(tx, actor, ref)
            if not user.active:
                raise Conflict("an inactive account cannot be recertified")
            user.recertified_at = now
            user.recertified_by = actor.user_id
            tx.save(user)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="recertify",
                ObjectType="user",
                Object=user.name,
                details={"changes": {"comment": comment}},
            )
            return user

    def vendor_accounts(self, actor: Actor, hospital: str | None = None) -> list[User]:
        """Every vendor account that can reach the hospital through an active contract."""
        with self.ctx.uow() as tx:
            if sees_all(actor) and hospital:
                hosp = find_org(tx, hospital)
            elif actor.org_kind == OrgKind.HOSPITAL:
                hosp = find_org(tx, actor.org_id)
            else:
                raise InvalidInput("name the hospital (platform admins only)")
            if hosp.kind != OrgKind.HOSPITAL:
                raise InvalidInput(f"{hosp.name} is not a hospital")
            vendors = vendors_reaching(tx, hosp.id, self.ctx.now())
            if not vendors:
                return []
            return [
                u
                for u in tx.find(User, org_id=list(vendors), order_by="name")
                if Role.ENGINEER in u.roles
            ]

    # --- SSH keys ----------------------------------------------------------------
    def add_key(self, actor: Actor, line: str, user_ref: str | None = None) -> SshKey:
        key, fp, comment = sshkeys.parse(line)
        with self.ctx.uow() as tx:
            user = (
                self._get_user(tx, actor, user_ref)
                if user_ref
                else self._get_user(tx, actor, actor.user_id)
            )
            if Role.ENGINEER not in user.roles:
                raise InvalidInput("only engineers register SSH keys")
            for k in tx.find(SshKey, fingerprint=fp):
                if k.revoked_at is None:
                    raise Conflict("this key is already registered")
            rec = SshKey(self.ctx.new_id(), user.id, key, fp, self.ctx.now(), comment[:200])
            tx.add(rec)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="add_key",
                ObjectType="ssh_key",
                Object=user.name,
                details={"changes": {"fingerprint": fp}},
            )
            return rec

    def list_keys(self, actor: Actor) -> list[SshKey]:
        with self.ctx.uow() as tx:
            return [
                k
                for k in tx.find(SshKey, user_id=actor.user_id, order_by="created_at")
                if k.revoked_at is None
            ]

    def revoke_key(self, actor: Actor, key_id: str) -> SshKey:
        with self.ctx.uow() as tx:
            k = tx.get(SshKey, key_id)
            if k is None or k.user_id != actor.user_id:
                raise NotFound("no such key")
            if k.revoked_at is not None:
                raise Conflict("key already revoked")
            k.revoked_at = self.ctx.now()
            tx.save(k)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="revoke_key",
                ObjectType="ssh_key",
                Object=actor.username,
                details={"changes": {"fingerprint": k.fingerprint}},
            )
            return k


def _org_cols(org: Org) -> dict[str, Any]:
    if org.kind == OrgKind.HOSPITAL:
        return {"HospitalId": org.id}
    if org.kind == OrgKind.VENDOR:
        return {"VendorId": org.id}
    return {}
