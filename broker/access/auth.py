"""Sign-in: passwords, TOTP, lockout, bearer and API tokens.

Denied by default: an unknown name, a wrong password, a wrong, expired or
replayed TOTP code, a locked, inactive or expired account each raise
:class:`Unauthenticated` (the message never says which part was wrong) and
write a failed ``user.login`` (past ten a minute from one source, counted into
one ``user.login_flood``).  Five failures (password or TOTP, API or SSH, or a
wrong current password) within 15 minutes lock the account for ``lockout_s``
and write ``user.locked_out``.  Every answer costs one password hash; only a
real account answers "locked"; the account row is held ``FOR UPDATE`` while it
is decided.  A new password or TOTP ends every earlier token and SSH
certificate (:mod:`broker.access.credentials`).  Tokens are random; only their
SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from audit.events import Result
from broker.access import credentials, names, passwords, totp
from broker.access.certs import revoke_cert_serials
from broker.access.errors import (
    AccessError,
    Conflict,
    InvalidInput,
    LockedOut,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from broker.access.model import AuthFailure, Org, OrgKind, Role, Token, User
from broker.access.permissions import SCOPES
from broker.access.ports import Actor, Context, Tx
from broker.access.signin_failures import FailedSignIns

TOKEN_PREFIX = "hoshu_"  # noqa: S105  (a prefix, not a secret)


def token_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # shown once
    token_id: str
    expires_at: datetime
    scopes: tuple[str, ...]
    totp_enrolment_required: bool = False


@dataclass(frozen=True, slots=True)
class TotpCheck:
    ok: bool
    locked: bool = False
    failures: int = 0
    reason: str = ""  # wrong | replayed | locked | no_totp
    locked_now: bool = False  # this failure locked the account
    locked_until: datetime | None = None


def account_usable(user: User, now: datetime) -> bool:
    return user.active and (user.expires_at is None or user.expires_at > now)


class AuthService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.failures = FailedSignIns(ctx)  # user.login failures, aggregated per source

    # --- helpers ---------------------------------------------------------
    def issue(
        self, tx: Tx, user: User, *, kind: str, scopes: list[str], ttl_s: int, name: str = ""
    ) -> IssuedToken:
        """A new bearer token for ``user``, stored hashed in ``tx``. It checks nothing:
        callers have already signed the user in (tests use it to skip the sign-in)."""
        now = self.ctx.now()
        text = TOKEN_PREFIX + self.ctx.random_token(32)
        tok = Token(
            id=self.ctx.new_id(),
            user_id=user.id,
            token_hash=token_hash(text),
            kind=kind,
            scopes=scopes,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
            name=name,
        )
        tx.add(tok)
        return IssuedToken(
            text, tok.id, tok.expires_at, tuple(scopes), totp_enrolment_required="enroll" in scopes
        )

    def _fail(
        self, tx: Tx, user: User, kind: str, src_ip: str | None, hospital_id: str | None = None
    ) -> TotpCheck:
        """Count one failure; lock the account at the threshold (and raise the alert).

        ``hospital_id``: the hospital whose instrument the sign-in named (SSH), so its
        auditors see the failure and the lockout."""
        now = self.ctx.now()
        cfg = self.ctx.config
        tx.add(AuthFailure(self.ctx.new_id(), user.id, now, kind))
        since = now - timedelta(seconds=cfg.lockout_window_s)
        count = len(tx.find(AuthFailure, user_id=user.id, at__gte=since))
        locked = user.locked_until is not None and user.locked_until > now
        if count >= cfg.lockout_failures and not locked:
            user.locked_until = now + timedelta(seconds=cfg.lockout_s)
            tx.save(user)
            revoke_cert_serials(tx, user.id, now, "locked out")
            self.ctx.emit(
                "user.locked_out",
                None,
                result=Result.FAILURE,
                ActorUserId=user.id,
                ActorUsername=user.name,
                SrcIpAddr=src_ip,
                HospitalId=hospital_id,
                details={
                    "failures": count,
                    "window_s": cfg.lockout_window_s,
                    "locked_until": user.locked_until.isoformat(),
                },
            )
            self.ctx.emit(
                "alert.raised",
                None,
                ActorUserId=user.id,
                ActorUsername=user.name,
                SrcIpAddr=src_ip,
                HospitalId=hospital_id,
                EventResultDetails="account locked out",
                details={
                    "alert": "user.locked_out",
                    "reason": f"{user.name}: too many failed sign-ins",
                },
            )
            return TotpCheck(False, True, count, locked_now=True, locked_until=user.locked_until)
        return TotpCheck(False, locked, count, locked_until=user.locked_until if locked else None)

    def _login_failed(
        self, name: str, user_id: str | None, reason: str, src_ip: str | None
    ) -> None:
        self.failures.login_failed(name, user_id, reason, src_ip)

    # --- bootstrap -------------------------------------------------------
    def bootstrap(self, name: str, full_name: str, password: str) -> tuple[User, str]:
        """Create the first platform admin (TOTP enrolled); returns the TOTP secret."""
        passwords.check_policy(password, username=name)
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            for u in tx.find(User, active=True):
                if Role.PLATFORM_ADMIN in u.roles:
                    raise Conflict("a platform admin already exists")
            if tx.one(User, name=name) is not None:
                raise Conflict(f"user {name!r} already exists")
            org = tx.one(Org, name="platform")
            if org is None:
                org = Org(self.ctx.new_id(), "platform", OrgKind.PLATFORM.value, now)
                tx.add(org)
            secret = totp.new_secret()
            user = User(
                self.ctx.new_id(),
                name,
                full_name,
                org.id,
                [Role.PLATFORM_ADMIN.value],
                now,
                password_hash=self.ctx.hasher.hash(password),
                totp_secret_enc=self.ctx.secrets.seal(secret),
                totp_enrolled=True,
            )
            tx.add(user)
            self.ctx.emit(
                "admin.change",
                None,
                ActorUsername="bootstrap",
                Operation="bootstrap",
                ObjectType="user",
                Object=name,
                details={"changes": {"roles": user.roles}},
            )
        return user, secret

    # --- login -------------------------------------------------------------
    @staticmethod
    def _source_ok(tx: Tx, user: User, src_ip: str | None) -> bool:
        org = tx.get(Org, user.org_id)
        return org is not None and names.source_allowed(org.source_cidrs, src_ip)

    def _password_first(
        self, name: str, password: str, src_ip: str | None, source: str | None, now: datetime
    ) -> tuple[str, bool]:
        """The password check of :meth:`login`, with no transaction open.

        A short transaction reads the account; the argon2id check (tens of
        milliseconds of CPU) runs after it, so on SQLite, where every transaction
        holds the one write lock, sign-ins do not wait for each other's checks.
        Returns the hash checked and whether the password matched it, or ("", False)
        after a dummy check of the same cost (no usable account: the timing does not
        tell which).  A throttled source is refused here, before any hash is spent."""
        cfg = self.ctx.config
        with self.ctx.uow() as tx:
            since = now - timedelta(seconds=cfg.lockout_window_s)
            if (
                source
                and len(tx.find(AuthFailure, user_id=source, at__gte=since)) >= cfg.source_failures
            ):
                self._login_failed(name, None, "source throttled", src_ip)
                raise Unauthenticated(
                    "too many failed sign-ins from this address: try again later",
                    code="source_throttled",
                )
            user = tx.one(User, name=name)
            usable = (
                user is not None
                and not (user.locked_until is not None and user.locked_until > now)
                and account_usable(user, now)
                and self._source_ok(tx, user, src_ip)
            )
            hashed = user.password_hash if usable and user is not None else ""
        if not hashed:
            self.ctx.hasher.verify_dummy(password)
            return "", False
        return hashed, self.ctx.hasher.verify(hashed, password)

    def login(
        self, name: str, password: str, code: str | None, src_ip: str | None = None
    ) -> IssuedToken:
        """Password + TOTP → bearer token (enrolment-only before TOTP enrolment).

        Throttled per account (lockout) and per source (more than
        ``source_failures`` failures in the window from one address, or one IPv6
        /64, refuse every sign-in from it whatever the name, so guessing across
        names is slowed too) — never globally.  Every refusal costs one password
        hash, whether the name exists or not, and only a real account ever answers
        "locked".  The account row is locked (``FOR UPDATE``) for the whole
        check, so parallel sign-ins count every failure and use a TOTP step once.

        The password hash is checked before that transaction
        (:meth:`_password_first`), so a burst of sign-ins is not served one
        password check at a time behind SQLite's single write lock."""
        now = self.ctx.now()
        cfg = self.ctx.config
        error: Unauthenticated | None = None
        issued: IssuedToken | None = None
        source = names.source_bucket(src_ip)
        checked, matched = self._password_first(name, password, src_ip, source, now)
        with self.ctx.uow() as tx:
            since = now - timedelta(seconds=cfg.lockout_window_s)
            if (
                source
                and len(tx.find(AuthFailure, user_id=source, at__gte=since)) >= cfg.source_failures
            ):
                self._login_failed(name, None, "source throttled", src_ip)
                raise Unauthenticated(
                    "too many failed sign-ins from this address: try again later",
                    code="source_throttled",
                )
            found = tx.one(User, name=name)
            user = tx.get(User, found.id, for_update=True) if found is not None else None
            # the refusals below spent their password hash in _password_first already
            if user is None:
                self._login_failed(name, None, "unknown user", src_ip)
                error = Unauthenticated("invalid credentials")
            elif user.locked_until is not None and user.locked_until > now:
                self._login_failed(name, user.id, "locked out", src_ip)
                error = LockedOut("too many failed sign-ins: the account is locked for a while")
            elif not account_usable(user, now):
                self._login_failed(name, user.id, "account inactive or expired", src_ip)
                error = Unauthenticated("invalid credentials")
            elif not self._source_ok(tx, user, src_ip):
                self._login_failed(name, user.id, "source address not allowed", src_ip)
                error = Unauthenticated("invalid credentials")
            elif not (
                matched
                if checked and user.password_hash == checked
                # the hash changed (or the account became usable) since the first check
                else self.ctx.hasher.verify(user.password_hash, password)
            ):
                check = self._fail(tx, user, "password", src_ip)
                self._login_failed(name, user.id, "wrong password", src_ip)
                error = (
                    LockedOut("too many failed sign-ins")
                    if check.locked
                    else Unauthenticated("invalid credentials")
                )
            elif user.totp_enrolled:
                step = totp.verify(
                    self.ctx.secrets.open(user.totp_secret_enc),
                    code or "",
                    now,
                    user.totp_last_step,
                )
                if step is None:
                    check = self._fail(tx, user, "totp", src_ip)
                    self.ctx.emit(
                        "user.mfa_failed",
                        None,
                        result=Result.FAILURE,
                        ActorUserId=user.id,
                        ActorUsername=name,
                        SrcIpAddr=src_ip,
                        details={"method": "totp", "failures": check.failures},
                    )
                    self._login_failed(name, user.id, "wrong second factor", src_ip)
                    error = (
                        LockedOut("too many failed sign-ins")
                        if check.locked
                        else Unauthenticated("invalid credentials")
                    )
                else:
                    user.totp_last_step = step
                    tx.save(user)
                    issued = self.issue(
                        tx, user, kind="session", scopes=["*"], ttl_s=cfg.access_token_ttl_s
                    )
            else:
                issued = self.issue(
                    tx, user, kind="session", scopes=["enroll"], ttl_s=cfg.enroll_token_ttl_s
                )
            if error is not None and source:
                tx.add(AuthFailure(self.ctx.new_id(), source, now, "source"))
            if issued is not None and user is not None:
                self.ctx.emit(
                    "user.login",
                    None,
                    ActorUserId=user.id,
                    ActorUsername=name,
                    SrcIpAddr=src_ip,
                    details={
                        "method": "password+totp" if user.totp_enrolled else "password",
                        "mfa": user.totp_enrolled,
                    },
                )
        if error is not None:
            raise error
        assert issued is not None
        return issued

    def flush_floods(self, *, everything: bool = False) -> int:
        """Write the counts of failed sign-ins that were only counted (the sweeper)."""
        return self.failures.flush(everything=everything)

    def authenticate(self, text: str, src_ip: str | None = None) -> Actor:
        """Resolve a bearer token to an :class:`Actor`; raise when unusable."""
        now = self.ctx.now()
        if not text.startswith(TOKEN_PREFIX) or len(text) > 200:
            raise Unauthenticated("invalid token")
        with self.ctx.uow() as tx:
            tok = tx.one(Token, token_hash=token_hash(text))
            if tok is None or tok.revoked_at is not None:
                raise Unauthenticated("invalid token")
            if tok.expires_at <= now:
                raise Unauthenticated("token expired", code="token_expired")
            user = tx.get(User, tok.user_id)
            if user is None or not account_usable(user, now):
                raise Unauthenticated("account inactive or expired")
            org = tx.get(Org, user.org_id)
            if org is None or not names.source_allowed(org.source_cidrs, src_ip):
                raise Unauthenticated("your organisation does not allow this source address")
            return Actor(
                user.id,
                user.name,
                user.org_id,
                org.kind,
                frozenset(user.roles),
                frozenset(tok.scopes),
                src_ip,
                tok.kind,
            )

    def logout(self, actor: Actor, text: str) -> None:
        with self.ctx.uow() as tx:
            tok = tx.one(Token, token_hash=token_hash(text))
            if tok is not None and tok.revoked_at is None:
                tok.revoked_at = self.ctx.now()
                tx.save(tok)
                # the SSH certificates issued under this sign-in end with it
                revoke_cert_serials(tx, tok.user_id, tok.revoked_at, "signed out")
                self.ctx.emit("user.logout", actor)

    # --- TOTP ----------------------------------------------------------------
    def totp_begin(self, actor: Actor) -> str:
        """Start enrolment: a new secret; returns the otpauth:// URI."""
        with self.ctx.uow() as tx:
            user = self._user(tx, actor.user_id)
            if user.totp_enrolled:
                raise Conflict("TOTP is already enrolled; an admin must reset it")
            secret = totp.new_secret()
            user.totp_secret_enc = self.ctx.secrets.seal(secret)
            tx.save(user)
        return totp.provisioning_uri(secret, user.name)

    def totp_confirm(self, actor: Actor, code: str) -> IssuedToken:
        """Finish enrolment with a first code; returns a full bearer token."""
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            user = self._user(tx, actor.user_id)
            if user.totp_enrolled:
                raise Conflict("TOTP is already enrolled")
            if not user.totp_secret_enc:
                raise Conflict("start TOTP enrolment first")
            step = totp.verify(
                self.ctx.secrets.open(user.totp_secret_enc), code, now, user.totp_last_step
            )
            if step is None:
                raise InvalidInput(
                    "that code does not match; check the device clock", code="invalid_totp"
                )
            user.totp_enrolled = True
            user.totp_last_step = step
            tx.save(user)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="totp_enrolled",
                ObjectType="user",
                Object=user.name,
            )
            return self.issue(
                tx, user, kind="session", scopes=["*"], ttl_s=self.ctx.config.access_token_ttl_s
            )

    def check_totp(
        self,
        user_id: str,
        code: str,
        now: datetime,
        src_ip: str | None = None,
        *,
        hospital_id: str | None = None,
    ) -> TotpCheck:
        """Second factor for the SSH front door: accepted once, failures count."""
        with self.ctx.uow() as tx:
            user = tx.get(User, user_id, for_update=True)
            if user is None or not account_usable(user, now) or not user.totp_enrolled:
                return TotpCheck(False, reason="no_totp")
            if user.locked_until is not None and user.locked_until > now:
                return TotpCheck(
                    False, locked=True, reason="locked", locked_until=user.locked_until
                )
            secret = self.ctx.secrets.open(user.totp_secret_enc)
            step = totp.verify(secret, code, now, user.totp_last_step)
            if step is None:
                reason = (
                    "replayed"
                    if totp.is_replay(secret, code, now, user.totp_last_step)
                    else "wrong"
                )
                check = self._fail(tx, user, "totp", src_ip, hospital_id)
                self.ctx.emit(
                    "user.mfa_failed",
                    None,
                    result=Result.FAILURE,
                    ActorUserId=user.id,
                    ActorUsername=user.name,
                    SrcIpAddr=src_ip,
                    HospitalId=hospital_id,
                    EventResultDetails=reason,
                    details={"method": "totp", "failures": check.failures},
                )
                return TotpCheck(
                    False,
                    check.locked,
                    check.failures,
                    reason,
                    check.locked_now,
                    check.locked_until,
                )
            user.totp_last_step = step
            tx.save(user)
            return TotpCheck(True)

    def change_password(self, actor: Actor, old: str, new: str, current_token: str = "") -> None:
        """A wrong current password counts towards the lockout like a failed sign-in
        (``user.reauth_failed``); a change revokes every token and SSH certificate
        of the account but ``current_token``, the one the person is using now."""
        error: AccessError | None = None
        with self.ctx.uow() as tx:
            user = tx.get(User, actor.user_id, for_update=True)
            if user is None:
                raise NotFound("no such user")
            if user.locked_until is not None and user.locked_until > self.ctx.now():
                raise LockedOut("too many failed sign-ins: the account is locked for a while")
            if not self.ctx.hasher.verify(user.password_hash, old):
                check = self._fail(tx, user, "password", actor.src_ip)
                self.ctx.emit(
                    "user.reauth_failed",
                    actor,
                    result=Result.FAILURE,
                    EventResultDetails="wrong current password",
                    details={"failures": check.failures},
                )
                error = (
                    LockedOut("too many failed sign-ins")
                    if check.locked
                    else PermissionDenied("the current password is wrong")
                )
            else:
                passwords.check_policy(new, username=user.name)
                user.password_hash = self.ctx.hasher.hash(new)
                user.password_change_required = False
                tx.save(user)
                self.ctx.emit(
                    "admin.change",
                    actor,
                    Operation="password_changed",
                    ObjectType="user",
                    Object=user.name,
                )
                credentials.revoke_all(
                    self.ctx,
                    tx,
                    actor,
                    user,
                    "password changed",
                    keep_token_hash=token_hash(current_token) if current_token else "",
                )
        if error is not None:  # raised after the commit, so the failure counts
            raise error

    # --- API tokens ------------------------------------------------------------
    def create_api_token(
        self, actor: Actor, name: str, scopes: list[str], ttl_s: int
    ) -> IssuedToken:
        if not scopes or any(s not in SCOPES for s in scopes):
            raise InvalidInput(f"scopes must be some of {', '.join(SCOPES)}")
        if not 0 < ttl_s <= self.ctx.config.api_token_max_ttl_s:
            raise InvalidInput("ttl_s out of range")
        if actor.token_kind == "api":  # noqa: S105
            raise PermissionDenied("API tokens cannot create API tokens")
        with self.ctx.uow() as tx:
            user = self._user(tx, actor.user_id)
            issued = self.issue(
                tx, user, kind="api", scopes=sorted(set(scopes)), ttl_s=ttl_s, name=name
            )
            self.ctx.emit(
                "token.issued",
                actor,
                ObjectType="token",
                Object=name,
                details={
                    "token_id": issued.token_id,
                    "scopes": list(issued.scopes),
                    "expires": issued.expires_at.isoformat(),
                },
            )
            return issued

    def list_tokens(self, actor: Actor) -> list[Token]:
        with self.ctx.uow() as tx:
            return tx.find(Token, user_id=actor.user_id, kind="api", order_by="created_at")

    def revoke_token(self, actor: Actor, token_id: str) -> Token:
        with self.ctx.uow() as tx:
            tok = tx.get(Token, token_id)
            if tok is None or tok.user_id != actor.user_id or tok.kind != "api":
                raise NotFound("no such token")
            if tok.revoked_at is not None:
                raise Conflict("token already revoked")
            tok.revoked_at = self.ctx.now()
            tx.save(tok)
            self.ctx.emit(
                "token.revoked",
                actor,
                ObjectType="token",
                Object=tok.name,
                details={"token_id": tok.id},
            )
            return tok

    @staticmethod
    def _user(tx: Tx, user_id: str) -> User:
        user = tx.get(User, user_id)
        if user is None:
            raise NotFound("no such user")
        return user
