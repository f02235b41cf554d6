"""Parallel sign-ins on the real databases cannot beat the lockout or reuse a TOTP step.

Every sign-in holds the account row (``FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite) from reading it to counting the failure or using the
step.  The hasher below makes the race as wide as it gets: each sign-in waits
inside the password check until all of them are there (or until it is clear
they are being served one at a time).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from audit.testing import CapturingEmitter
from broker.access import totp
from broker.access.errors import LockedOut, Unauthenticated
from broker.access.model import AuthFailure, User
from broker.access.passwords import Hasher
from tests.control.conftest import PASSWORD, World
from tests.support import FakeClock

N = 8
WAIT_S = 2.0


class RacingHasher(Hasher):
    """Holds every password check until ``parties`` checks run at once (or WAIT_S)."""

    def __init__(self, parties: int) -> None:
        super().__init__(time_cost=1, memory_cost=64)
        self.barrier = threading.Barrier(parties)

    def verify(self, hashed: str, password: str) -> bool:
        try:
            self.barrier.wait(WAIT_S)
        except threading.BrokenBarrierError:
            pass  # served one by one: nothing to line up
        return super().verify(hashed, password)


def in_parallel(world: World, attempt: object, n: int = N) -> list[str]:
    world.s.ctx.hasher = RacingHasher(n)

    def one(_: int) -> str:
        try:
            world.s.auth.login(*attempt)  # type: ignore[misc]
            return "ok"
        except LockedOut:
            return "locked"
        except Unauthenticated:
            return "refused"

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n), timeout=60))


def test_one_totp_code_signs_in_once_however_many_try_at_once(
    world: World, clock: FakeClock, emitter: CapturingEmitter
) -> None:
    secret = world.enrol_totp("appr")
    code = totp.code_at(secret, clock())
    results = in_parallel(world, ("appr", PASSWORD, code))
    assert results.count("ok") == 1, results
    # the replays are failures like any other: the fifth locks the account
    assert results.count("refused") + results.count("locked") == N - 1
    ok = [
        e
        for e in emitter.of_type("user.login")
        if e.record["EventResult"] == "Success" and e.record["ActorUsername"] == "appr"
    ]
    assert len(ok) == 1


@pytest.mark.parametrize("n", [5, N])
def test_parallel_wrong_passwords_count_every_failure_and_lock(
    world: World, emitter: CapturingEmitter, n: int
) -> None:
    limit = world.s.ctx.config.lockout_failures
    results = in_parallel(world, ("appr", "wrong-password-123", None), n)
    uid = world.users["appr"].id
    with world.s.ctx.uow() as tx:
        failures = tx.find(AuthFailure, user_id=uid)
        user = tx.get(User, uid)
    assert user is not None and user.locked_until is not None  # the account is locked
    assert len(failures) == limit  # every attempt up to the limit counted, none lost
    locked = emitter.of_type("user.locked_out")
    assert len(locked) == 1 and locked[0].details["failures"] == limit
    # the attempts that arrived once it was locked were answered "locked"
    assert results.count("locked") == n - limit + 1 and results.count("ok") == 0
