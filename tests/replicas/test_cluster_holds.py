"""Held shell lines across three real ``hoshu serve`` replicas on one PostgreSQL.

The hospital holds ``touch …held-…`` lines.  The engineer's stock ``ssh`` runs an
interactive shell through replica a (which then owns the session; its gateway is
tunnelled to a), against the lab's real sshd.  The held line is listed on b (the
``hoshu holds`` CLI) and on c (the API); on c, which does not run the session, an
approver of another hospital, the engineer and the hospital's auditor are each refused
(403, ``admin.refused`` naming the hold) and the line keeps waiting.  The approver
allows it from b's API: it runs on the instrument (the figure: answer on b to the
file on the instrument), a second answer from c is a conflict (409), and a writes
``session.command_released`` naming her.  A second line is refused from c's console
(a form POST with its CSRF token and a step-up code): it never reaches the instrument.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hoshu_demo.demo import HOSPITAL, _tool
from tests.replicas.cluster import INSTRUMENT, Cluster, api, token, wait
from tests.replicas.shell import Shell

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.xdist_group("cluster"),
    pytest.mark.timeout(600),
]
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.fixture(scope="module")
def cluster(shared_cluster: Cluster) -> Cluster:
    """The package's cluster, with the gateway tunnelled to replica a."""
    return shared_cluster.ready(("a",))


def bearer(d: Cluster, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(d, user)}"}


@pytest.fixture(scope="module")
def people(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """tanaka granted the instrument; tsuki approves for another hospital; the hospital
    holds ``touch …held-…`` lines (its rules as before once the module is done);
    everyone signed in."""
    d = cluster
    codes = d.sign_in(("admin", "tanaka", "sato", "suzuki", "tsuki"))
    policy = f"{api(d, 'a')}/v1/policies/{HOSPITAL}"
    before = httpx.get(policy, headers=bearer(d, "admin"), timeout=30)
    assert before.status_code == 200, before.text
    rules = [{"action": "hold", "pattern": r"\btouch\s+\S*held-", "reason": "held in a test"}]
    r = httpx.patch(policy, json={"command_rules": rules}, headers=bearer(d, "admin"), timeout=30)
    assert r.status_code == 200, r.text
    d.grant(reason="held lines across replicas", ticket="INC-17", plan="run a held command")
    yield {"codes": codes, "passwords": d.passwords}
    back = {"command_rules": before.json()["command_rules"]}
    r = httpx.patch(policy, json=back, headers=bearer(d, "admin"), timeout=30)
    assert r.status_code == 200, r.text


def held_row(d: Cluster, command: str) -> Any:
    rows = wait(
        f"{command!r} held in the database",
        lambda: (
            d._query(
                "SELECT hold_id, replica_id, state FROM command_holds WHERE command = :c",
                c=command,
            )
            or None
        ),
    )
    return rows[0]


def state_of(d: Cluster, hold_id: str) -> str:
    return str(d._query("SELECT state FROM command_holds WHERE hold_id = :h", h=hold_id)[0][0])


def listed_ids(d: Cluster, replica: str, user: str) -> list[str]:
    r = httpx.get(f"{api(d, replica)}/v1/holds", headers=bearer(d, user), timeout=30)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["holds"]]


def cli_holds(d: Cluster, user: str, replica: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("hoshu"), "--json", "holds", "--api", api(d, replica), *args],
        env=d.env(user),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def released(d: Cluster, hold_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in d.events("a")
        if e.get("EventType") == "session.command_released"
        and e.get("Details", {}).get("hold") == hold_id
    ]


def refused_on(d: Cluster, replica: str, hold_id: str, user: str) -> list[dict[str, Any]]:
    """``admin.refused`` events of ``user`` answering: naming the hold, or refused by
    the permission table before the hold was looked up."""
    return [
        e
        for e in d.events(replica)
        if e.get("EventType") == "admin.refused"
        and e.get("ActorUsername") == user
        and e.get("Operation") == "commands.release"
        and e.get("Object") in (hold_id, None)
    ]


def test_a_line_held_on_a_is_answered_from_b_and_c(
    cluster: Cluster, people: dict[str, Any]
) -> None:
    d = cluster
    codes = people["codes"]
    done = d.root / "held-one"
    never = d.root / "held-two"
    shell = Shell(d, codes["tanaka"].code(), "a")
    try:
        wait(
            "the session on a",
            lambda: (
                d._query("SELECT 1 FROM live_sessions WHERE replica_id = 'a' AND state = 'live'")
                or None
            ),
        )
        wait("the shell's first output", lambda: shell.out.stat().st_size > 0)
        shell.type(f"touch {done}")
        hold_id, owner, state = held_row(d, f"touch {done}")
        assert owner == "a" and state == "waiting"

        # listed on b (the CLI) and on c (the API); not by another hospital's approver
        r = cli_holds(d, "sato", "b")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        rows = out["holds"] if isinstance(out, dict) else out
        [row] = [h for h in rows if h["id"] == hold_id]
        assert row["engineer"] == "tanaka" and row["instrument"] == INSTRUMENT
        assert row["command"] == f"touch {done}" and row["replica"] == "a"
        assert hold_id in listed_ids(d, "c", "sato")
        assert hold_id in listed_ids(d, "c", "tanaka")  # the engineer sees his own
        assert hold_id not in listed_ids(d, "c", "tsuki")

        # the forgotten paths, on c (not the owner): refused, and the line keeps waiting
        for user in ("tsuki", "tanaka", "suzuki"):
            r2 = httpx.post(
                f"{api(d, 'c')}/v1/holds/{hold_id}/allow", headers=bearer(d, user), timeout=30
            )
            assert r2.status_code == 403, (user, r2.text)
            wait(f"admin.refused for {user} on c", lambda u=user: refused_on(d, "c", hold_id, u))
        [theirs] = refused_on(d, "c", hold_id, "tsuki")
        assert theirs["Object"] == hold_id and theirs["TargetSessionId"]  # judged on the row
        assert "hospital" in theirs["Details"]["reason"]
        assert state_of(d, hold_id) == "waiting" and hold_id in listed_ids(d, "b", "sato")
        assert not done.exists() and not released(d, hold_id)

        # allowed from b's API: it reaches the instrument through a
        t0 = time.monotonic()
        r3 = httpx.post(
            f"{api(d, 'b')}/v1/holds/{hold_id}/allow", headers=bearer(d, "sato"), timeout=30
        )
        answered = time.monotonic()
        assert r3.status_code == 200, r3.text
        assert r3.json()["decision"] == "allowed" and r3.json()["by"] == "sato"
        poll_fast(done.exists, 10)
        reached = time.monotonic()
        print(
            f"FIGURE held line allowed on replica b reached the instrument through a "
            f"{reached - t0:.3f} s after the approver sent it ({reached - answered:.3f} s "
            f"after b answered)"
        )
        assert reached - answered < 1.0
        # b's commit of the answer (the row) to the file's time on the instrument
        committed = d._query(
            "SELECT extract(epoch FROM answered_at) FROM command_holds WHERE hold_id = :h",
            h=hold_id,
        )[0][0]
        lag = done.stat().st_mtime - float(committed)
        print(f"FIGURE b's answer committed -> the line ran on the instrument via a: {lag:.3f} s")
        assert lag < 1.0
        # a second answer, on another replica: the first one won
        r4 = httpx.post(
            f"{api(d, 'c')}/v1/holds/{hold_id}/refuse", headers=bearer(d, "sato"), timeout=30
        )
        assert r4.status_code == 409, r4.text
        [ev] = wait("session.command_released on a", lambda: released(d, hold_id) or None)
        assert ev["EventResultDetails"] == "allowed" and ev["Details"]["by"] == "sato"
        assert hold_id not in listed_ids(d, "b", "sato")

        # refused from c's console: it never reaches the instrument
        wait("the allowed notice", lambda: shell.seen("allowed by sato; sent"))
        shell.type(f"touch {never}")
        hold2, _, _ = held_row(d, f"touch {never}")
        http = httpx.Client(base_url=api(d, "c"), timeout=30)
        try:
            login = http.post(
                "/console/login",
                data={
                    "username": "sato",
                    "password": people["passwords"]["sato"],
                    "totp": codes["sato"].code(),
                },
            )
            assert login.status_code == 303, login.text
            page = http.get("/console/holds")
            assert page.status_code == 200 and f'data-hold="{hold2}"' in page.text
            assert f"touch {never}" in page.text
            csrf = CSRF.search(page.text)
            assert csrf
            r5 = http.post(
                f"/console/holds/{hold2}/refuse",
                data={"csrf": csrf.group(1), "stepup_totp": codes["sato"].code()},
                follow_redirects=False,
            )
            assert r5.status_code == 303, r5.text
        finally:
            http.close()
        [ev2] = wait("the refusal on a", lambda: released(d, hold2) or None)
        assert ev2["EventResultDetails"] == "refused" and ev2["Details"]["by"] == "sato"
        wait("the refusal told", lambda: shell.seen("refused by sato; the command was not sent"))
        shell.type("echo after-$((2*3))")
        wait("the shell goes on", lambda: shell.seen("after-6"))
        assert not never.exists()
        assert state_of(d, hold2) == "refused"
    finally:
        shell.close()


def poll_fast(cond: Any, deadline_s: float) -> None:
    """Poll every 5 ms (the figure measures how soon the line arrives)."""
    end = time.monotonic() + deadline_s
    while not cond():
        assert time.monotonic() < end, "the held line did not reach the instrument"
        time.sleep(0.005)
