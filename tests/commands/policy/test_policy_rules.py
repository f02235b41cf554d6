"""A hospital's command rules: set through the API, checked, scoped to instruments."""

from __future__ import annotations

from audit.testing import CapturingEmitter
from broker.access.commandrules import rules_for
from broker.live.commands import SUGGESTED_ANALYZER_RULES
from tests.control.apihelp import auth, client_for, session_token
from tests.control.conftest import World

RULES = [
    {"action": "deny", "pattern": r"\bmkfs\b", "reason": "formatting a disk"},
    {"action": "hold", "pattern": r"\breboot\b", "instrument": "cobas-1"},
    {"action": "deny", "pattern": r"\bdd\b", "department": "hematology"},
]


def test_a_hospital_admin_sets_command_rules(world: World, emitter: CapturingEmitter) -> None:
    c = client_for(world.s)
    hadmin = auth(session_token(world.s, world.users["hadmin"]))
    r = c.patch("/v1/policies/hoshi-hospital", headers=hadmin, json={"command_rules": RULES})
    assert r.status_code == 200, r.text
    stored = r.json()["command_rules"]
    assert [x["pattern"] for x in stored] == [x["pattern"] for x in RULES]
    got = c.get("/v1/policies/hoshi-hospital", headers=hadmin).json()["command_rules"]
    assert got == stored
    change = [e for e in emitter.of_type("admin.change") if e.get("ObjectType") == "policy"][-1]
    assert "command_rules" in change.details["changes"]
    # the rules of one instrument: the hospital's, its own, its department's
    assert [x["action"] for x in rules_for(stored, "cobas-1", "chemistry")] == ["deny", "hold"]
    assert [x["action"] for x in rules_for(stored, "las-line-a", "chemistry")] == ["deny"]
    assert [x["action"] for x in rules_for(stored, "x-1", "hematology")] == ["deny", "deny"]
    # the suggested rules for analyzers are accepted as they are
    r = c.patch(
        "/v1/policies/hoshi-hospital",
        headers=hadmin,
        json={"command_rules": list(SUGGESTED_ANALYZER_RULES)},
    )
    assert r.status_code == 200 and len(r.json()["command_rules"]) == len(SUGGESTED_ANALYZER_RULES)


def test_bad_rules_change_nothing(world: World) -> None:
    c = client_for(world.s)
    hadmin = auth(session_token(world.s, world.users["hadmin"]))
    c.patch("/v1/policies/hoshi-hospital", headers=hadmin, json={"command_rules": RULES})
    for bad in (
        [{"action": "deny", "pattern": "rm ("}],
        [{"action": "log", "pattern": "rm"}],
        [{"action": "deny", "pattern": ""}],
        [{"action": "deny", "pattern": "x", "extra": "y"}],
        [{"action": "deny", "pattern": "x" * 501}],
    ):
        r = c.patch("/v1/policies/hoshi-hospital", headers=hadmin, json={"command_rules": bad})
        assert r.status_code in (400, 422), (bad, r.text)
    got = c.get("/v1/policies/hoshi-hospital", headers=hadmin).json()["command_rules"]
    assert [x["pattern"] for x in got] == [x["pattern"] for x in RULES]


def test_only_the_hospitals_admin_sets_them(world: World) -> None:
    c = client_for(world.s)
    body = {"command_rules": [{"action": "deny", "pattern": "x"}]}
    for who in ("appr", "eng", "aud", "other-appr"):
        token = auth(session_token(world.s, world.users[who]))
        r = c.patch("/v1/policies/hoshi-hospital", headers=token, json=body)
        assert r.status_code in (403, 404), (who, r.status_code)
    hadmin = auth(session_token(world.s, world.users["hadmin"]))
    assert c.get("/v1/policies/hoshi-hospital", headers=hadmin).json()["command_rules"] == []
