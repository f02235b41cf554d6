"""The HTTP API: sign-in, error shape, limits, enrolment, audit of changes."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import timedelta

from audit.testing import CapturingEmitter
from broker.access import totp
from tests.control.apihelp import auth, client_for, session_token
from tests.control.conftest import PASSWORD, World, openssh_public_key
from tests.support import FakeClock
from wire import PROTOCOL_VERSION


def assert_error(resp: object, status: int, code: str | None = None) -> dict[str, object]:
    r = resp
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    if code:
        assert body["error"]["code"] == code
    return body["error"]  # type: ignore[no-any-return]


def test_openapi_is_served(world: World) -> None:
    c = client_for(world.s)
    spec = c.get("/openapi.json").json()
    assert "/v1/requests/{request_id}/approve" in spec["paths"]
    assert c.get("/v1/health").json() == {"status": "ok"}


def test_sign_in_enrol_totp_and_use_the_api(world: World, clock: FakeClock) -> None:
    c = client_for(world.s)
    r = c.post("/v1/auth/login", json={"username": "eng", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["totp_enrolment_required"] is True
    enrol = auth(r.json()["access_token"])
    assert_error(c.get("/v1/requests", headers=enrol), 403, "forbidden")
    uri = c.post("/v1/auth/totp/enroll", headers=enrol).json()["otpauth_uri"]
    secret = uri.split("secret=")[1].split("&")[0]
    r = c.post("/v1/auth/totp/confirm", headers=enrol, json={"code": totp.code_at(secret, clock())})
    assert r.status_code == 200 and r.json()["scopes"] == ["*"]
    clock.advance(30)
    r = c.post(
        "/v1/auth/login",
        json={"username": "eng", "password": PASSWORD, "totp_code": totp.code_at(secret, clock())},
    )
    token = r.json()["access_token"]
    me = c.get("/v1/me", headers=auth(token)).json()
    assert me["name"] == "eng" and me["totp_enrolled"] and me["roles"] == ["engineer"]
    assert c.post("/v1/auth/logout", headers=auth(token)).status_code == 204
    assert_error(c.get("/v1/me", headers=auth(token)), 401)


def test_errors_share_one_shape(world: World, clock: FakeClock, emitter: CapturingEmitter) -> None:
    c = client_for(world.s, max_body_bytes=2048)
    tok = auth(session_token(world.s, world.users["eng"]))
    assert_error(
        c.post("/v1/auth/login", json={"username": "eng", "password": "nope-nope"}),
        401,
        "unauthenticated",
    )
    assert_error(c.get("/v1/requests"), 401)
    assert_error(c.get("/v1/requests", headers=auth("hoshu_forged")), 401)
    assert_error(
        c.post(
            "/v1/requests",
            headers={**tok, "content-type": "application/json"},
            content=b"{not json",
        ),
        422,
        "invalid_input",
    )
    err = assert_error(
        c.post(
            "/v1/requests",
            headers=tok,
            json={"instruments": ["cobas-1"], "reason": "x", "duration_s": 600, "sudo": True},
        ),
        422,
        "invalid_input",
    )
    assert "sudo" in str(err["details"])
    assert_error(c.post("/v1/requests", headers=tok, content=b"x" * 5000), 413, "body_too_large")
    assert_error(c.get("/v1/requests/nope", headers=tok), 404, "not_found")
    assert_error(c.get("/v1/nowhere", headers=tok), 404)
    assert_error(
        c.post(
            "/v1/requests",
            headers=tok,
            json={"instruments": ["cobas-1"], "reason": "x", "duration_s": 999999},
        ),
        422,
    )
    world.s.estate.update_policy(world.admin, "hoshi-hospital", {"max_duration_s": 3600})
    assert_error(
        c.post(
            "/v1/requests",
            headers=tok,
            json={"instruments": ["cobas-1"], "reason": "x", "duration_s": 3601},
        ),
        422,
        "policy_violation",
    )
    assert_error(
        c.post(
            "/v1/requests",
            headers=tok,
            json={"instruments": ["lis-server"], "reason": "x", "duration_s": 600},
        ),
        403,
        "forbidden",
    )
    refused = [e.details.get("reason") for e in emitter.of_type("request.refused")]
    assert len(refused) == 3 and "maximum" in str(refused[1]) and "contract" in str(refused[2])
    assert world.s.requests.list_requests(world.actors["eng"]) == []
    clock.advance(901)
    assert_error(c.get("/v1/me", headers=tok), 401, "token_expired")


def test_cross_hospital_approval_is_refused_audited_and_changes_nothing(
    world: World, emitter: CapturingEmitter
) -> None:
    c = client_for(world.s)
    eng = auth(session_token(world.s, world.users["eng"]))
    rid = c.post(
        "/v1/requests",
        headers=eng,
        json={
            "instruments": ["cobas-1"],
            "reason": "probe",
            "duration_s": 600,
            "ticket": "T-1",
            "work_plan": "作業計画: swap probe",
        },
    ).json()["id"]
    other = auth(session_token(world.s, world.users["other-appr"]))
    assert_error(c.post(f"/v1/requests/{rid}/approve", headers=other, json={}), 403)
    refused = emitter.of_type("request.refused")
    assert refused and refused[-1].get("ActorUsername") == "other-appr"
    assert refused[-1].get("Operation") == "requests.approve"
    appr = auth(session_token(world.s, world.users["appr"]))
    detail = c.get(f"/v1/requests/{rid}", headers=appr).json()
    assert detail["request"]["status"] == "pending" and detail["decisions"] == []
    detail = c.post(f"/v1/requests/{rid}/approve", headers=appr, json={"comment": "ok"}).json()
    assert detail["grant"]["status"] == "active" and detail["grant"]["user"] == "eng"
    assert detail["request"]["requester"] == "eng"
    assert [d["approver"] for d in detail["decisions"]] == ["appr"]
    assert [h["to_state"] for h in detail["history"]] == ["approved", "approved", "active"]
    assert detail["request"]["work_plan"].startswith("作業計画")


def test_gateway_enrolment_contract(
    world: World, clock: FakeClock, emitter: CapturingEmitter
) -> None:
    c = client_for(world.s)
    hadmin = auth(session_token(world.s, world.users["hadmin"]))
    r = c.post("/v1/gateways/tokens", headers=hadmin, json={"ttl_s": 600})
    assert r.status_code == 201
    token = r.json()["token"]
    prefix, token_id, secret, pin = token.split(".")
    assert prefix == "hoshu-enroll-v1" and r.json()["hospital"] == "hoshi-hospital"
    key = openssh_public_key()
    body = {"token": token, "public_key": key, "name": "gw-hoshi-1", "version": "0.1.0"}
    r = c.post("/v1/gateways/enroll", json=body)
    assert r.status_code == 201, r.text
    res = r.json()
    assert set(res) == {
        "gateway_id",
        "hospital_id",
        "hospital",
        "broker_host_key",
        "tunnel_host",
        "tunnel_port",
        "protocol_version",
    }
    blob = base64.b64decode(res["broker_host_key"].split()[1])
    assert base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=") == pin
    assert res["hospital"] == "hoshi-hospital" and res["protocol_version"] == PROTOCOL_VERSION
    assert emitter.of_type("gateway.enrolled")
    assert secret not in "".join(e.to_json() for e in emitter.events)
    assert_error(c.post("/v1/gateways/enroll", json={**body, "name": "gw-2"}), 410, "gone")
    forged = f"hoshu-enroll-v1.{token_id}.{'A' * len(secret)}.{pin}"
    assert_error(c.post("/v1/gateways/enroll", json={**body, "token": forged}), 401)
    assert_error(c.post("/v1/gateways/enroll", json={**body, "token": "garbage"}), 401)
    late = c.post("/v1/gateways/tokens", headers=hadmin, json={"ttl_s": 60}).json()["token"]
    clock.advance(61)
    assert_error(
        c.post(
            "/v1/gateways/enroll",
            json={**body, "token": late, "name": "gw-3", "public_key": openssh_public_key()},
        ),
        410,
    )
    assert len(emitter.of_type("gateway.enrollment_refused")) == 4
    gws = c.get("/v1/gateways", headers=hadmin).json()
    assert [g["name"] for g in gws] == ["gw-hoshi-1"]


def test_credentials_are_write_only(world: World, emitter: CapturingEmitter) -> None:
    c = client_for(world.s)
    hadmin = auth(session_token(world.s, world.users["hadmin"]))
    secret = "Instrument-Pw-4711!"
    r = c.put(
        "/v1/instruments/cobas-1/credential",
        headers=hadmin,
        json={"kind": "password", "secret": secret, "username": "service"},
    )
    assert r.status_code == 200 and r.json()["credential_set"] is True
    for path in ("/v1/instruments/cobas-1", "/v1/instruments"):
        assert secret not in c.get(path, headers=hadmin).text
    assert all(secret not in e.to_json() for e in emitter.events)
    other = auth(session_token(world.s, world.users["other-appr"]))
    assert_error(c.get("/v1/instruments/cobas-1", headers=other), 404)


def test_every_admin_change_is_an_event_naming_who(world: World, emitter: CapturingEmitter) -> None:
    c = client_for(world.s)
    hadmin = auth(session_token(world.s, world.users["hadmin"]))
    emitter.clear()
    steps = [
        c.patch(
            "/v1/policies/hoshi-hospital",
            headers=hadmin,
            json={"approvals_required": 2, "emergency_allowed": True},
        ),
        c.post(
            "/v1/instruments",
            headers=hadmin,
            json={"name": "ca-1", "host": "10.0.0.50", "ports": [22], "criticality": "high"},
        ),
        c.patch("/v1/instruments/ca-1", headers=hadmin, json={"department": "hematology"}),
        c.post(
            "/v1/contracts",
            headers=hadmin,
            json={"vendor": "acme-labs", "hospital": "hoshi-hospital", "instruments": ["ca-1"]},
        ),
        c.post(
            "/v1/users",
            headers=hadmin,
            json={
                "name": "nurse-a",
                "full_name": "A Nurse",
                "org": "hoshi-hospital",
                "roles": ["approver"],
                "password": PASSWORD,
            },
        ),
        c.post("/v1/users/nurse-a/deactivate", headers=hadmin),
    ]
    assert [r.status_code for r in steps] == [200, 201, 200, 201, 201, 200], [r.text for r in steps]
    changes = emitter.of_type("admin.change")
    assert len(changes) == 6
    assert {e.get("ActorUsername") for e in changes} == {"hadmin"}
    assert [e.get("ObjectType") for e in changes] == [
        "policy",
        "instrument",
        "instrument",
        "contract",
        "user",
        "user",
    ]
    assert PASSWORD not in "".join(e.to_json() for e in emitter.events)


def test_scheduled_request_and_history_after_expiry_over_http(
    world: World, clock: FakeClock
) -> None:
    c = client_for(world.s)
    eng = auth(session_token(world.s, world.users["eng"]))
    start = (clock.now + timedelta(hours=1)).isoformat()
    rid = c.post(
        "/v1/requests",
        headers=eng,
        json={
            "instruments": ["cobas-1"],
            "ports": [8080],
            "reason": "calibration",
            "start_at": start,
            "duration_s": 1800,
        },
    ).json()["id"]
    appr = auth(session_token(world.s, world.users["appr"]))
    g = c.post(f"/v1/requests/{rid}/approve", headers=appr, json={}).json()["grant"]
    assert g["status"] == "approved" and g["starts_at"].startswith(start[:19])
    clock.advance(3 * 3600)
    appr = auth(session_token(world.s, world.users["appr"]))
    grants = c.get("/v1/grants", headers=appr).json()
    assert [x["status"] for x in grants] == ["expired"]
    detail = c.get(f"/v1/requests/{rid}", headers=appr).json()
    # the sweep first ran after the whole window: approved -> expired directly
    assert [h["to_state"] for h in detail["history"]] == ["approved", "approved", "expired"]
    assert detail["request"]["reason"] == "calibration"


def test_api_token_scope_limits_what_it_can_do(world: World) -> None:
    c = client_for(world.s)
    appr = auth(session_token(world.s, world.users["appr"]))
    r = c.post("/v1/tokens", headers=appr, json={"name": "dash", "scopes": ["read"]})
    assert r.status_code == 201
    api = auth(r.json()["access_token"])
    assert c.get("/v1/requests", headers=api).status_code == 200
    assert_error(c.post("/v1/grants/x/revoke", headers=api, json={}), 403)
    tid = r.json()["token_id"]
    assert c.post(f"/v1/tokens/{tid}/revoke", headers=appr).status_code == 200
    assert_error(c.get("/v1/requests", headers=api), 401)


def test_approval_fails_closed_when_the_audit_log_is_down(world: World) -> None:
    from audit.testing import FailingEmitter

    c = client_for(world.s)
    eng = auth(session_token(world.s, world.users["eng"]))
    rid = c.post(
        "/v1/requests",
        headers=eng,
        json={"instruments": ["cobas-1"], "reason": "probe", "duration_s": 600},
    ).json()["id"]
    appr = auth(session_token(world.s, world.users["appr"]))
    good = world.s.ctx.emitter
    world.s.ctx.emitter = FailingEmitter()
    assert_error(
        c.post(f"/v1/requests/{rid}/approve", headers=appr, json={}), 503, "audit_unavailable"
    )
    world.s.ctx.emitter = good
    detail = c.get(f"/v1/requests/{rid}", headers=appr).json()
    assert detail["request"]["status"] == "pending" and detail["grant"] is None


def test_streamed_body_over_the_limit_is_refused(world: World) -> None:
    c = client_for(world.s, max_body_bytes=1024)
    tok = auth(session_token(world.s, world.users["eng"]))

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 512

    r = c.post(
        "/v1/requests", headers={**tok, "content-type": "application/json"}, content=chunks()
    )
    assert_error(r, 413, "body_too_large")
    assert world.s.requests.list_requests(world.actors["eng"]) == []


async def test_a_body_that_never_finishes_gets_408_and_never_reaches_the_route() -> None:
    import asyncio

    from broker.api.limits import BodyLimit

    reached: list[bool] = []

    async def app(scope: object, receive: object, send: object) -> None:
        reached.append(True)

    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        await asyncio.Event().wait()  # a client that stops sending
        return {}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    mw = BodyLimit(app, max_bytes=1024, timeout_s=0.05)
    await asyncio.wait_for(mw({"type": "http", "headers": []}, receive, send), 5)  # type: ignore[arg-type]
    assert sent[0]["status"] == 408 and b"request_timeout" in sent[1]["body"]  # type: ignore[operator]
    assert reached == []


async def test_the_body_time_limit_is_its_own_setting_not_the_ssh_sign_in_limit(
    world: World,
) -> None:
    """``body_timeout_s`` bounds a slow request body; the SSH sign-in limit does not."""
    import asyncio
    import time

    from broker.api.app import create_app
    from broker.settings import BrokerSettings

    app = create_app(BrokerSettings(body_timeout_s=1, login_timeout_s=120), services=world.s)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        await asyncio.Event().wait()  # a client that stops sending
        return {}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/auth/login",
        "raw_path": b"",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8440),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    start = time.monotonic()
    await asyncio.wait_for(app(scope, receive, send), 10)  # type: ignore[arg-type]
    assert sent[0]["status"] == 408
    assert time.monotonic() - start < 5  # the 1 s limit, not the 120 s SSH one
