"""Sign-in checks the password before it takes the account's lock (a burst of sign-ins
on SQLite is not served one password check at a time), and still decides on the
account as it is when the token is issued."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest

from broker.access import totp
from broker.access.errors import LockedOut, Unauthenticated
from broker.access.model import User
from tests.control.conftest import PASSWORD, World

NEW_PASSWORD = "another-horse-battery-7"


def _during_check(world: World, monkeypatch: pytest.MonkeyPatch, act: Callable[[], None]) -> None:
    """Run ``act`` once, while sign-in checks a real password hash."""
    hasher = world.s.auth.ctx.hasher
    real = hasher.verify
    done: list[bool] = []

    def verify(hashed: str, password: str) -> bool:
        if not done and hashed != hasher.dummy_hash():
            done.append(True)
            act()
        return real(hashed, password)

    monkeypatch.setattr(hasher, "verify", verify)


def _lock_the_account(world: World, name: str) -> bool:
    """Another request takes the account's row lock (on SQLite: the write lock);
    True when it got it within 5 s."""
    got: list[bool] = []
    uid = world.users[name].id

    def take() -> None:
        with world.s.auth.ctx.uow() as tx:
            got.append(tx.get(User, uid, for_update=True) is not None)

    t = threading.Thread(target=take, daemon=True)
    t.start()
    t.join(timeout=5)
    return got == [True]


def test_while_the_password_is_checked_other_sign_ins_can_take_the_lock(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = world.enrol_totp("eng")
    seen: list[bool] = []
    _during_check(world, monkeypatch, lambda: seen.append(_lock_the_account(world, "eng")))
    issued = world.s.auth.login("eng", PASSWORD, totp.code_at(secret, world.clock()))
    assert seen == [True]
    assert world.s.auth.authenticate(issued.token).username == "eng"


def test_a_password_changed_during_the_check_is_decided_on_the_new_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = world.enrol_totp("eng")
    ctx = world.s.auth.ctx
    uid = world.users["eng"].id

    def change() -> None:
        with ctx.uow() as tx:
            user = tx.get(User, uid, for_update=True)
            assert user is not None
            user.password_hash = ctx.hasher.hash(NEW_PASSWORD)
            tx.save(user)

    _during_check(world, monkeypatch, change)
    with pytest.raises(Unauthenticated):
        world.s.auth.login("eng", PASSWORD, totp.code_at(secret, world.clock()))
    world.clock.advance(30)
    issued = world.s.auth.login("eng", NEW_PASSWORD, totp.code_at(secret, world.clock()))
    assert world.s.auth.authenticate(issued.token).username == "eng"


def test_an_account_locked_during_the_check_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = world.enrol_totp("eng")
    ctx = world.s.auth.ctx
    uid = world.users["eng"].id

    def lock() -> None:
        with ctx.uow() as tx:
            user = tx.get(User, uid, for_update=True)
            assert user is not None
            user.locked_until = world.clock() + timedelta(minutes=15)
            tx.save(user)

    _during_check(world, monkeypatch, lock)
    with pytest.raises(LockedOut):
        world.s.auth.login("eng", PASSWORD, totp.code_at(secret, world.clock()))


def test_a_code_used_by_a_sign_in_during_the_check_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sign-ins with one TOTP code, the second finishing during the first's
    password check: only one gets a token."""
    secret = world.enrol_totp("eng")
    code = totp.code_at(secret, world.clock())
    other: list[str] = []
    _during_check(
        world, monkeypatch, lambda: other.append(world.s.auth.login("eng", PASSWORD, code).token)
    )
    with pytest.raises(Unauthenticated):
        world.s.auth.login("eng", PASSWORD, code)
    assert len(other) == 1 and world.s.auth.authenticate(other[0]).username == "eng"


def test_a_wrong_password_still_counts_towards_lockout(world: World) -> None:
    for _ in range(world.s.auth.ctx.config.lockout_failures):
        with pytest.raises((Unauthenticated, LockedOut)):
            world.s.auth.login("eng", "wrong-password-123", None)
    with pytest.raises(LockedOut):
        world.s.auth.login("eng", PASSWORD, None)
