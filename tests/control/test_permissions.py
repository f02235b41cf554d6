"""docs/permissions.md is the truth: every endpoint of the assembled broker, every role.

The table is parsed from the document.  The tests prove, against the app that
``build_broker`` assembles for ``hoshu serve`` (audit, recordings, reports,
reviews, live sessions and SSH certificates included): (1) the page lists
exactly the endpoints that app serves, (2) it equals the permission table in
code (roles, organisation kinds, scope), and (3) calling each endpoint as
people of each role and organisation kind answers 403 exactly where the table
says "—" (or the person's organisation kind is not in the "Orgs" column).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.access.people import NewUser
from broker.access.permissions import ANY_ORG, ENROLMENT_ACTIONS, PERMISSIONS, SSH_ACTIONS
from broker.access.requests import NewRequest
from broker.assembly import build_broker
from broker.runtime import Runtime
from broker.settings import BrokerSettings
from tests.control.apihelp import auth, session_token
from tests.control.conftest import PASSWORD, T0, World, build_world, openssh_public_key
from tests.support import FakeClock, poll_sync

DOC = Path(__file__).parents[2] / "docs" / "permissions.md"
ROW = re.compile(
    r"^\| `(GET|POST|PUT|PATCH|DELETE|SSH) (/?\S+)` "
    r"\| (.+?) \| (.+?) \| (.+?) \| (.+) \|$"
)
ROLES = ["engineer", "approver", "hospital_admin", "auditor", "platform_admin", "vendor_admin"]
# (user, role the table column is read for, organisation kind)
WALKERS = [
    ("eng", "engineer", "vendor"),
    ("appr", "approver", "hospital"),
    ("hadmin", "hospital_admin", "hospital"),
    ("aud", "auditor", "hospital"),
    ("vaud", "auditor", "vendor"),
    ("paud", "auditor", "platform"),
    ("root", "platform_admin", "platform"),
    ("vadmin", "vendor_admin", "vendor"),
]
# path parameters a walker names instead (a vendor admin's own organisation is a vendor)
OWN_TARGETS = {"vadmin": {"hospital": "acme-labs"}}

Row = tuple[str, str, str | None, str, frozenset[str] | None, dict[str, str]]


def parse_table(*, ssh: bool = False) -> list[Row]:
    """The HTTP rows of docs/permissions.md (``ssh=True``: the SSH-path rows too)."""
    rows: list[Row] = []
    header: list[str] = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| Endpoint |"):
            header = [c.strip() for c in line.strip("|").split("|")][4:]
        m = ROW.match(line)
        if m:
            method, path, action, scope, orgs, cells = m.groups()
            values = [c.strip() for c in cells.split("|")]
            assert header == ROLES, "the table's role columns changed"
            if method == "SSH" and not ssh:
                continue
            act = action.strip("` ") if action != "—" else None
            kinds = None if orgs in ("any", "—") else frozenset(o.strip() for o in orgs.split(","))
            rows.append((method, path, act, scope, kinds, dict(zip(header, values, strict=True))))
    return rows


def _close(rt: Runtime) -> None:
    async def close() -> None:
        for closer in reversed(rt.closers):
            result = closer()
            if inspect.isawaitable(result):
                await result

    asyncio.run(close())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Runtime]:
    """The broker ``hoshu serve`` runs, built (not serving) over a fresh data dir."""
    rt = build_broker(BrokerSettings(data_dir=tmp_path / "data"))
    try:
        yield rt
    finally:
        _close(rt)


def test_table_lists_exactly_the_endpoints_of_the_assembled_broker(broker: Runtime) -> None:
    served = {(m.upper(), path) for path, ops in broker.app.openapi()["paths"].items() for m in ops}
    documented = {(m, p) for m, p, *_ in parse_table()}
    assert {p for _, p in served} >= {
        "/v1/sessions/{session_id}/terminate",
        "/v1/ssh/certificate",
        "/v1/audit/events",
    }
    assert documented == served


def test_table_equals_the_code() -> None:
    for _m, _p, action, scope, kinds, cells in parse_table(ssh=True):
        if action is None:
            assert set(cells.values()) == {"public"}
            continue
        perm = PERMISSIONS[action]
        allowed = {r for r, v in cells.items() if v == "yes"}
        assert allowed == {r.value for r in perm.roles}, action
        assert scope == perm.scope, action
        assert (kinds or frozenset(ANY_ORG)) == {k.value for k in perm.orgs}, action
    assert {row[2] for row in parse_table(ssh=True) if row[2]} == set(PERMISSIONS)
    assert {row[2] for row in parse_table(ssh=True) if row[0] == "SSH"} == SSH_ACTIONS


def _targets(w: World, client: TestClient, root_token: str) -> dict[str, str]:
    s = w.s
    spare = s.people.create_user(
        w.admin, NewUser("spare", "Spare Person", "hoshi-hospital", ["auditor"], PASSWORD)
    )
    beta = s.people.create_org(w.admin, "beta-labs", "vendor")
    contract = s.estate.create_contract(w.admin, beta.name, "hoshi-hospital", ["lis-server"])
    key = s.people.add_key(w.actors["eng"], openssh_public_key())
    token = s.gateways.issue_token(w.actors["hadmin"], "hoshi-hospital").token
    gw = s.gateways.enroll(token, openssh_public_key(), "gw-walk", "1")
    req = s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "walk"))
    granted = s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "walk"))
    grant = s.requests.approve(w.actors["appr2"], granted.id).grant
    assert grant is not None
    # a session of the hospital in the audit trail, so its recording has an owner
    s.ctx.emit(
        "session.started",
        w.actors["eng"],
        TargetSessionId="s-walk",
        HospitalId=w.hospital.id,
        details={"kind": "shell"},
    )
    poll_sync(
        lambda: client.get("/v1/audit/events?session=s-walk", headers=auth(root_token)).json()[
            "events"
        ],
        15,
        "the index to see the session",
        interval_s=0.05,
    )
    return {
        "org": beta.name,
        "user": spare.name,
        "key_id": key.id,
        "token_id": "no-such-token",
        "contract_id": contract.id,
        "hospital": "hoshi-hospital",
        "name": "cobas-1",
        "gateway": gw.gateway_id,
        "request_id": req.id,
        "grant_id": grant.id,
        "session_id": "s-walk",
        "hold_id": "h-no-such-hold",
        "month": "2026-03",
    }


def _walk_world(broker: Runtime) -> tuple[World, dict[str, Any]]:
    services = broker.control.services
    w = build_world(services, FakeClock(T0))
    platform = services.people.org_of(w.admin.org_id)
    assert platform is not None
    w.add_user("paud", platform, ["auditor"])
    w.add_user("vadmin", w.vendor, ["vendor_admin"])
    users: dict[str, Any] = {**w.users}
    users["root"] = next(u for u in services.people.list_users(w.admin) if u.name == "root")
    return w, users


def _call(c: TestClient, method: str, url: str, token: str) -> Any:
    kwargs: dict[str, object] = {"headers": auth(token)}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return c.request(method, url, **kwargs)  # type: ignore[arg-type]


def _url(path: str, targets: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: targets[m.group(1)], path)


def test_every_endpoint_with_every_role_matches_the_table(broker: Runtime) -> None:
    services = broker.control.services
    w, users = _walk_world(broker)
    with TestClient(broker.app, raise_server_exceptions=False) as c:
        targets = _targets(w, c, session_token(services, users["root"]))
        mismatches = []
        succeeded = 0
        for method, path, action, _scope, kinds, cells in parse_table():
            if action is None:
                continue
            for name, role, kind in WALKERS:
                # a fresh token per call: logout and revocations end the ones before
                url = _url(path, {**targets, **OWN_TARGETS.get(name, {})})
                r = _call(c, method, url, session_token(services, users[name]))
                succeeded += r.status_code < 300
                expect_forbidden = cells[role] != "yes" or (kinds is not None and kind not in kinds)
                if (r.status_code == 403) != expect_forbidden or r.status_code in (401, 500):
                    mismatches.append((method, path, name, r.status_code, r.text[:120]))
    assert mismatches == []
    assert succeeded >= 80, "too few allowed calls got through: the walk proves little"


def test_every_endpoint_refuses_a_token_without_its_scope(broker: Runtime) -> None:
    """A read-only token and a password-only (before TOTP enrolment) token, held by a
    person whose role allows the action, are refused exactly where the Scope column says."""
    services = broker.control.services
    w, users = _walk_world(broker)
    with TestClient(broker.app, raise_server_exceptions=False) as c:
        targets = _targets(w, c, session_token(services, users["root"]))
        mismatches = []
        for method, path, action, scope, kinds, cells in parse_table():
            if action is None:
                continue
            name = next(
                n
                for n, role, kind in WALKERS
                if cells[role] == "yes" and (kinds is None or kind in kinds)
            )
            for scopes, allowed in (
                (["read"], scope in ("read", "any")),
                (["enroll"], action in ENROLMENT_ACTIONS),
            ):
                token = session_token(services, users[name], scopes=scopes)
                r = _call(c, method, _url(path, targets), token)
                if (r.status_code == 403) == allowed or r.status_code in (401, 500):
                    mismatches.append((method, path, scopes, r.status_code, r.text[:120]))
    assert mismatches == []
