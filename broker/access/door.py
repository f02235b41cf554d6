"""What the SSH front door asks the domain, and the answers' types.

The control plane's store implements :class:`AccessPolicy` (engineers, TOTP,
grants, instruments with decrypted credentials:
:class:`broker.store.directory.StoreAccessPolicy`); tests use fakes.  The
types here belong to the domain, so the store never imports the front door.
The route to an instrument is the tunnel part's
(:class:`broker.tunnel.connector.InstrumentConnector`).

Every method denies by returning ``None``/a failed result; the front door treats
an exception raised by a policy method as a denial (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Engineer:
    """An active, unexpired person whose registered key matched."""

    user_id: str
    username: str
    organization: str = ""  # vendor name, for audit columns
    source_cidrs: tuple[str, ...] = ()  # the vendor's allowed source networks; () = any
    # roles and organisation kind, for the permission table (broker.access.permissions);
    # none means every SSH path is refused
    roles: frozenset[str] = frozenset()
    org_kind: str = ""


@dataclass(frozen=True, slots=True)
class TotpResult:
    """The answer to one TOTP check.

    ``ok`` is True only for a valid code never accepted before.  ``locked_now``
    is True on exactly the failure that locked the account (the front door
    raises the alert event then); ``locked_until`` is set while locked.
    """

    ok: bool
    reason: str = ""  # "wrong", "replayed", "locked", "no_totp"
    failures: int = 0  # failures inside the lockout window
    locked_now: bool = False
    locked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class GrantView:
    """An approved grant, active now, naming this engineer and instrument."""

    grant_id: str
    user_id: str
    instrument: str
    ports: tuple[int, ...]
    ends: datetime
    file_transfer: bool = False
    hospital_id: str = ""
    emergency: bool = False


@dataclass(frozen=True, slots=True)
class GrantEnd:
    """The answer to "does this running session's grant still hold, and until when?".

    ``ends`` is set while the grant holds.  When it no longer does, ``ends`` is
    ``None`` and ``why`` says why, in the words the session ends with:
    ``grant_revoked``, ``grant_expired``, ``grant_ended`` (ended by its engineer),
    ``engineer_inactive``, ``contract_ended``, ``grant_unknown`` or ``grant_not_started``.
    """

    ends: datetime | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class InstrumentTarget:
    """Where and how the broker logs in to an instrument.

    ``credential`` is a private key in OpenSSH/PEM form or a password; it is
    used by the relay only, never printed, logged or put in an event.
    ``host_key_fingerprint`` is the ``SHA256:...`` fingerprint the gateway
    reported and the hospital accepted; ``None`` means not yet accepted, and
    then no SSH session is relayed.
    """

    name: str
    hospital_id: str
    gateway_id: str
    host: str
    ssh_port: int
    ports: tuple[int, ...]
    username: str
    credential: str = field(repr=False)
    host_key_fingerprint: str | None = None
    protocol: str = "ssh"  # the inventory's protocol (wire.names.INSTRUMENT_PROTOCOLS)
    keyboard_layout: str = "en-US"  # what an RDP desktop types on (estate.KEYBOARD_LAYOUTS)
    record_input: bool = False  # the hospital's policy: record what engineers type in shells
    # the hospital's command rules for shells: ({"action": "deny"|"hold", "pattern", "reason"}, ...)
    command_rules: tuple[dict[str, str], ...] = ()

    @property
    def credential_is_key(self) -> bool:
        return "PRIVATE KEY" in self.credential


class AccessPolicy(Protocol):
    """The control plane's answers (contracts.md "Front door")."""

    def engineer_for_key(self, username: str, openssh_public_key: str) -> Engineer | None: ...

    def check_totp(
        self,
        user_id: str,
        code: str,
        now: datetime,
        *,
        src_ip: str | None = None,
        hospital_id: str | None = None,
    ) -> TotpResult:
        """Check a second factor.  The policy alone writes ``user.mfa_failed``,
        ``user.locked_out`` and the lockout alert, with ``src_ip`` and the
        ``hospital_id`` of the instrument the login names (its auditors see them)."""
        ...

    def hospital_of(self, instrument: str) -> str | None:
        """The hospital an instrument belongs to (for audit columns only), or None."""
        ...

    def cert_usable(self, user_id: str, serial: int, now: datetime) -> str | None:
        """None if a user certificate may sign in; else why not (locked, revoked...)."""
        ...

    def record_cert(
        self, user_id: str, serial: int, issued_at: datetime, valid_until: datetime
    ) -> None:
        """Remember an issued certificate's serial: only recorded serials sign in."""
        ...

    def find_grant(
        self, user_id: str, instrument: str, port: int, now: datetime
    ) -> GrantView | None: ...

    def grant_end(self, grant_id: str, user_id: str, now: datetime) -> GrantEnd: ...

    def instrument(self, name: str) -> InstrumentTarget | None: ...
