"""One permission table, seen from outside: refusals name their request, and people see
only the organisations (and source networks) that concern them."""

from __future__ import annotations

from fastapi.testclient import TestClient

from audit.testing import CapturingEmitter
from broker.access.requests import NewRequest
from broker.api.app import create_app
from broker.settings import BrokerSettings
from tests.control.apihelp import auth, session_token
from tests.control.conftest import World

NET = "10.1.0.0/16"


def _client(w: World) -> TestClient:
    app = create_app(BrokerSettings(), services=w.s)
    return TestClient(app, raise_server_exceptions=False, client=("10.1.2.3", 50000))


def test_refused_decisions_carry_the_request_and_grant_id(
    world: World, emitter: CapturingEmitter
) -> None:
    w = world
    c = _client(w)
    req = w.s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "calibration"))
    other = session_token(w.s, w.users["other-appr"])
    r = c.post(f"/v1/requests/{req.id}/approve", json={}, headers=auth(other))
    assert r.status_code == 403, r.text
    assert w.s.requests.show(w.actors["appr"], req.id).request.status == "pending"
    (refused,) = emitter.of_type("request.refused")
    assert refused.get("RequestId") == req.id
    assert refused.get("ActorUsername") == "other-appr"
    assert refused.get("Operation") == "requests.approve"

    granted = w.s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "fix"))
    grant = w.s.requests.approve(w.actors["appr"], granted.id).grant
    assert grant is not None
    r = c.post(f"/v1/grants/{grant.id}/revoke", json={"comment": "x"}, headers=auth(other))
    assert r.status_code == 403, r.text
    assert emitter.of_type("request.refused")[-1].get("GrantId") == grant.id
    after = w.s.requests.show(w.actors["appr"], granted.id).grant
    assert after is not None and after.status == grant.status
    # a read-only token is refused by scope, and the refusal still names the request
    ro = c.post(
        "/v1/tokens",
        json={"name": "ro", "scopes": ["read"]},
        headers=auth(session_token(w.s, w.users["appr"])),
    ).json()["access_token"]
    r = c.post(f"/v1/requests/{granted.id}/deny", json={}, headers=auth(ro))
    assert r.status_code == 403
    last = emitter.of_type("request.refused")[-1]
    assert (last.get("RequestId"), last.get("ActorUsername")) == (granted.id, "appr")


def _orgs(c: TestClient, w: World, who: str) -> dict[str, list[str]]:
    r = c.get("/v1/orgs", headers=auth(session_token(w.s, w.users[who])))
    assert r.status_code == 200, r.text
    return {o["name"]: o["source_cidrs"] for o in r.json()}


def test_each_role_sees_only_the_organisations_and_networks_that_concern_it(world: World) -> None:
    w = world
    s = w.s
    for org in ("hoshi-hospital", "tsuki-hospital", "acme-labs"):
        s.people.set_sources(w.admin, org, [NET])
    s.people.create_org(w.admin, "beta-labs", "vendor", [NET])  # no contract anywhere
    platform = s.people.org_of(w.admin.org_id)
    assert platform is not None
    w.add_user("paud", platform, ["auditor"])
    users = {u.name: u for u in s.people.list_users(w.admin)}
    w.users["root"] = users["root"]
    c = _client(w)
    everyone = {"hoshi-hospital", "tsuki-hospital", "acme-labs", "beta-labs", platform.name}

    root = _orgs(c, w, "root")
    assert set(root) == everyone and root["acme-labs"] == [NET]
    paud = _orgs(c, w, "paud")
    assert set(paud) == everyone and all(v == [] for v in paud.values())
    assert _orgs(c, w, "hadmin") == {"hoshi-hospital": [NET], "acme-labs": []}
    assert _orgs(c, w, "appr") == {"hoshi-hospital": [], "acme-labs": []}
    assert _orgs(c, w, "aud") == {"hoshi-hospital": [], "acme-labs": []}
    assert _orgs(c, w, "other-appr") == {"tsuki-hospital": [], "acme-labs": []}
    assert _orgs(c, w, "eng") == {"acme-labs": [], "hoshi-hospital": [], "tsuki-hospital": []}
    assert _orgs(c, w, "vaud") == {"acme-labs": [], "hoshi-hospital": [], "tsuki-hospital": []}
