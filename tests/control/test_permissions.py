"""docs/permissions.md is the truth: every endpoint, every role, over HTTP.

The table is parsed from the document.  The test proves (1) it lists exactly
the endpoints the API serves, (2) it equals the permission table in code, and
(3) calling each endpoint as each role answers 403 exactly where the table
says "—".
"""

from __future__ import annotations

import re
from pathlib import Path

from broker.access.model import Role
from broker.access.people import NewUser
from broker.access.permissions import PERMISSIONS
from broker.access.requests import NewRequest
from broker.api.app import create_app
from broker.settings import BrokerSettings
from tests.control.apihelp import auth, client_for, session_token
from tests.control.conftest import PASSWORD, World, openssh_public_key

DOC = Path(__file__).parents[2] / "docs" / "permissions.md"
ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/\S+)` \| (.+?) \| (.+?) \| (.+) \|$")
ROLES = [r.value for r in Role]
ROLE_USER = {"engineer": "eng", "approver": "appr", "hospital_admin": "hadmin",
             "auditor": "aud", "platform_admin": "root"}


def parse_table() -> list[tuple[str, str, str | None, dict[str, str]]]:
    rows = []
    header: list[str] = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| Endpoint |"):
            header = [c.strip() for c in line.strip("|").split("|")][3:]
        m = ROW.match(line)
        if m:
            method, path, action, _scope, cells = m.groups()
            values = [c.strip() for c in cells.split("|")]
            assert header == ROLES, "the table's role columns changed"
            act = action.strip("` ") if action != "—" else None
            rows.append((method, path, act, dict(zip(header, values, strict=True))))
    return rows


def test_table_lists_exactly_the_served_endpoints() -> None:
    app = create_app(BrokerSettings(), services=object())  # type: ignore[arg-type]
    served = {(m.upper(), path) for path, ops in app.openapi()["paths"].items()
              for m in ops}
    documented = {(m, p) for m, p, _, _ in parse_table()}
    assert documented == served


def test_table_equals_the_code() -> None:
    for _m, _p, action, cells in parse_table():
        if action is None:
            assert set(cells.values()) == {"public"}
            continue
        allowed = {r for r, v in cells.items() if v == "yes"}
        assert allowed == {r.value for r in PERMISSIONS[action].roles}, action
    assert {a for *_, a, _ in parse_table() if a} == set(PERMISSIONS)


def _targets(w: World) -> dict[str, str]:
    s = w.s
    spare = s.people.create_user(w.admin, NewUser("spare", "Spare Person", "hoshi-hospital",
                                                  ["auditor"], PASSWORD))
    beta = s.people.create_org(w.admin, "beta-labs", "vendor")
    contract = s.estate.create_contract(w.admin, beta.name, "hoshi-hospital", ["lis-server"])
    key = s.people.add_key(w.actors["eng"], openssh_public_key())
    token = s.gateways.issue_token(w.actors["hadmin"], "hoshi-hospital").token
    gw = s.gateways.enroll(token, openssh_public_key(), "gw-walk", "1")
    req = s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "walk"))
    granted = s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "walk"))
    grant = s.requests.approve(w.actors["appr2"], granted.id).grant
    assert grant is not None
    return {"org": beta.name, "user": spare.name, "key_id": key.id, "token_id": "no-such-token",
            "contract_id": contract.id, "hospital": "hoshi-hospital", "name": "cobas-1",
            "gateway": gw.gateway_id, "request_id": req.id, "grant_id": grant.id}


def test_every_endpoint_with_every_role_matches_the_table(world: World) -> None:
    w = world
    targets = _targets(w)
    users = {**w.users, "root": None}
    c = client_for(w.s)
    root = next(u for u in w.s.people.list_users(w.admin) if u.name == "root")
    users["root"] = root
    mismatches = []
    succeeded = 0
    for method, path, action, cells in parse_table():
        if action is None:
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: targets[m.group(1)], path)
        for role in ROLES:
            user = users[ROLE_USER[role]]
            assert user is not None
            token = session_token(w.s, user)
            kwargs: dict[str, object] = {"headers": auth(token)}
            if method in ("POST", "PUT", "PATCH"):
                kwargs["json"] = {}
            r = c.request(method, url, **kwargs)  # type: ignore[arg-type]
            succeeded += r.status_code < 300
            expect_forbidden = cells[role] != "yes"
            if (r.status_code == 403) != expect_forbidden or r.status_code in (401, 500):
                mismatches.append((method, path, role, r.status_code, r.text[:120]))
    assert mismatches == []
    assert succeeded >= 60, "too few allowed calls got through: the walk proves little"
