"""Passwords: the policy of GUIDELINES.md control 8 and argon2 hashing.

Accepted: 13 or more characters, or 8 or more mixing at least three of
lower case, upper case, digits and symbols.  Refused whatever their length:
anything on the shipped known-bad list (``data/bad_passwords.txt``, compared
case-insensitively), and anything containing the account name.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from importlib import resources
from threading import Lock

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from broker.access.errors import InvalidInput

MAX_LENGTH = 1024


@lru_cache(maxsize=1)
def known_bad() -> frozenset[str]:
    text = resources.files("broker.access").joinpath("data/bad_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def classes(password: str) -> int:
    return sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )


def check_policy(password: str, *, username: str = "") -> None:
    """Raise :class:`InvalidInput` saying why ``password`` is not acceptable."""
    if len(password) > MAX_LENGTH:
        raise InvalidInput("password is too long", code="weak_password")
    if password.lower() in known_bad():
        raise InvalidInput("password is on the list of known-bad passwords", code="weak_password")
    if username and len(username) >= 3 and username.lower() in password.lower():
        raise InvalidInput("password must not contain the account name", code="weak_password")
    if len(password) >= 13:
        return
    if len(password) >= 8 and classes(password) >= 3:
        return
    raise InvalidInput(
        "password needs 13+ characters, or 8+ mixing upper case, lower case, digits "
        "and symbols (three of the four)",
        code="weak_password",
    )


class Hasher:
    """argon2id hashing; parameters are argon2-cffi's defaults unless given."""

    def __init__(self, *, time_cost: int = 3, memory_cost: int = 65536) -> None:
        self._ph = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost)
        self._dummy = ""
        self._dummy_lock = Lock()

    def dummy_hash(self) -> str:
        """A hash of a random password with this hasher's parameters (made once)."""
        with self._dummy_lock:
            if not self._dummy:
                self._dummy = self._ph.hash(secrets.token_urlsafe(24))
            return self._dummy

    def verify_dummy(self, password: str) -> bool:
        """Spend what a real check costs, for a name that has no usable hash, so the
        answer's timing does not tell whether the account exists.  Always False."""
        self.verify(self.dummy_hash(), password)
        return False

    def hash(self, password: str) -> str:
        return self._ph.hash(password)

    def verify(self, hashed: str, password: str) -> bool:
        if not hashed:
            return False
        try:
            return self._ph.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
