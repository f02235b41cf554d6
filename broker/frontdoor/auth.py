"""Pure pieces of front-door authentication: login names and per-connection state.

Login names are ``<user>+<instrument>`` (``alice+cobas-c503-1``) or just
``<user>`` (port forwards naming the instrument as the destination host).
Anything else is refused before any policy call.

The state machine of one connection::

    start ──publickey proven──▶ key_ok ──TOTP accepted──▶ done
      └──────user certificate (issued after MFA) proven──────▶ done

A key alone never reaches ``done``; there is no password method at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.access.door import Engineer
from broker.access.names import source_allowed as source_allowed  # the one rule
from wire.names import NAME_PATTERN as _INSTRUMENT
from wire.names import USERNAME_PATTERN as _USER  # the one definition of names


@dataclass(frozen=True, slots=True)
class LoginName:
    user: str
    instrument: str | None


def parse_login(login: str) -> LoginName | None:
    """Split ``user+instrument``; ``None`` for anything malformed."""
    user, plus, instrument = login.partition("+")
    if not _USER.fullmatch(user):
        return None
    if not plus:
        return LoginName(user, None)
    if not _INSTRUMENT.fullmatch(instrument):
        return None
    return LoginName(user, instrument)


def valid_instrument_name(name: str) -> bool:
    return bool(_INSTRUMENT.fullmatch(name))


@dataclass(slots=True)
class AuthState:
    """What one engineer connection has proven so far."""

    raw_login: str | None = None
    login: LoginName | None = None
    engineer: Engineer | None = None
    key_fingerprint: str = ""
    key_proven: bool = False
    cert_serial: int | None = None
    done: bool = False
    method: str = ""
    partial_pending: bool = False
    failure: str = "no credentials offered"
    candidates: dict[bytes, Engineer] = field(default_factory=dict)

    def prove_key(self, key_data: bytes, fingerprint: str) -> bool:
        """A signature by a registered key verified: the first factor holds."""
        eng = self.candidates.get(key_data)
        if eng is None:
            return False
        self.engineer = eng
        self.key_fingerprint = fingerprint
        self.key_proven = True
        self.partial_pending = True
        self.failure = "second factor not completed"
        return True

    def complete(self, method: str) -> None:
        self.done = True
        self.method = method
