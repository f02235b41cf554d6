"""Behind the ingress: the caller's real address decides throttling and source networks.

The API runs behind a proxy (Container Apps ingress) whose address every
request carries.  ``X-Forwarded-For`` is believed only from a trusted proxy,
read from the right; anything else is the TCP peer.
"""

from __future__ import annotations

import ipaddress

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from audit.testing import CapturingEmitter
from broker.access.services import Services
from broker.api.app import create_app
from broker.api.limits import client_address
from broker.settings import BrokerSettings
from tests.control.conftest import PASSWORD, World

INGRESS = "10.9.0.4"
INGRESS_NET = "10.9.0.0/16"


def api(services: Services, peer: str, trusted: list[str] | None = None) -> TestClient:
    settings = BrokerSettings(trusted_proxies=trusted or [])
    return TestClient(
        create_app(settings, services=services), raise_server_exceptions=False, client=(peer, 443)
    )


def sign_in(c: TestClient, name: str, password: str, xff: str | None = None) -> tuple[int, str]:
    headers = {"X-Forwarded-For": xff} if xff else {}
    r = c.post("/v1/auth/login", json={"username": name, "password": password}, headers=headers)
    code = "" if r.status_code == 200 else r.json()["error"]["code"]
    return r.status_code, code


def flood(c: TestClient, xff: str | None, n: int = 20) -> None:
    for i in range(n):
        assert sign_in(c, f"guess{i}", "whatever-123", xff)[0] == 401


def test_forwarded_callers_behind_a_trusted_proxy_are_throttled_independently(world: World) -> None:
    c = api(world.s, INGRESS, [INGRESS_NET])
    flood(c, "203.0.113.7")
    assert sign_in(c, "eng", PASSWORD, "203.0.113.7") == (401, "source_throttled")
    # another caller through the same ingress still signs in
    assert sign_in(c, "eng", PASSWORD, "203.0.113.8") == (200, "")
    # a hop the caller wrote itself (left of the real one) changes nothing
    assert sign_in(c, "eng", PASSWORD, "203.0.113.8, 203.0.113.7") == (401, "source_throttled")
    assert sign_in(c, "eng", PASSWORD, "203.0.113.7, 203.0.113.8") == (200, "")


def test_one_attackers_failures_do_not_lock_out_another_source_and_account(
    world: World, emitter: CapturingEmitter
) -> None:
    c = api(world.s, INGRESS, [INGRESS_NET])
    for i in range(20):  # 20 bad sign-ins: unknown names and a real account
        assert (
            sign_in(c, "appr" if i % 4 == 0 else f"guess{i}", "wrong-pass-123", "198.51.100.66")[0]
            == 401
        )
    assert sign_in(c, "eng2", PASSWORD, "192.0.2.10") == (200, "")
    assert sign_in(c, "appr2", PASSWORD, "192.0.2.11") == (200, "")
    failed = [e for e in emitter.of_type("user.login") if e.record["EventResult"] == "Failure"]
    assert {e.record["SrcIpAddr"] for e in failed} == {"198.51.100.66"}


def test_a_forged_forwarded_header_from_an_untrusted_peer_is_ignored(
    world: World, emitter: CapturingEmitter
) -> None:
    c = api(world.s, "198.51.100.20")  # no trusted proxies configured
    for i in range(20):  # a new forged address each time: it must not reset the count
        assert sign_in(c, f"guess{i}", "whatever-123", f"192.0.2.{i + 1}")[0] == 401
    assert sign_in(c, "eng", PASSWORD, "192.0.2.200") == (401, "source_throttled")
    srcs = {e.record["SrcIpAddr"] for e in emitter.of_type("user.login")}
    assert srcs == {"198.51.100.20"}
    # a peer outside the trusted networks is not believed either
    other = api(world.s, "198.51.100.21", [INGRESS_NET])
    assert sign_in(other, "eng", PASSWORD, "203.0.113.99") == (200, "")
    assert emitter.of_type("user.login")[-1].record["SrcIpAddr"] == "198.51.100.21"


def test_ipv6_callers_in_one_64_share_a_bucket(world: World) -> None:
    c = api(world.s, INGRESS, [INGRESS_NET])
    for i in range(20):
        assert sign_in(c, f"guess{i}", "whatever-123", f"2001:db8:1:2::{i + 1:x}")[0] == 401
    assert sign_in(c, "eng", PASSWORD, "2001:db8:1:2:ffff:ffff:ffff:1") == (401, "source_throttled")
    assert sign_in(c, "eng", PASSWORD, "2001:db8:1:3::1") == (200, "")


def test_source_networks_of_an_organisation_see_the_real_client(world: World) -> None:
    world.s.people.set_sources(world.admin, "acme-labs", ["203.0.113.0/24"])
    behind = api(world.s, INGRESS, [INGRESS_NET])
    r = behind.post(
        "/v1/auth/login",
        json={"username": "eng", "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert r.status_code == 200
    token = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert (
        behind.get("/v1/me", headers={**token, "X-Forwarded-For": "203.0.113.9"}).status_code == 200
    )
    # the same token from a caller outside the vendor's network, through the ingress
    assert (
        behind.get("/v1/me", headers={**token, "X-Forwarded-For": "198.51.100.1"}).status_code
        == 401
    )
    assert sign_in(behind, "eng", PASSWORD, "198.51.100.1")[0] == 401
    # a direct caller cannot claim to be inside the vendor's network
    direct = api(world.s, "198.51.100.50", [INGRESS_NET])
    assert sign_in(direct, "eng", PASSWORD, "203.0.113.9")[0] == 401
    assert (
        direct.get("/v1/me", headers={**token, "X-Forwarded-For": "203.0.113.9"}).status_code == 401
    )


def test_forwarded_header_parsing_fails_towards_the_proxy_not_a_forged_address() -> None:
    trusted = (ipaddress.ip_network("10.9.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert client_address(INGRESS, ["203.0.113.7"], trusted) == "203.0.113.7"
    assert (
        client_address(INGRESS, ["1.1.1.1, 203.0.113.7, 10.9.0.8"], trusted) == "203.0.113.7"
    )  # trusted hops on the right are skipped
    assert client_address(INGRESS, ["1.1.1.1", "203.0.113.7"], trusted) == "203.0.113.7"
    assert client_address(INGRESS, ["1.1.1.1, garbage"], trusted) == INGRESS
    assert client_address(INGRESS, ["[2001:db8::5]:443"], trusted) == "2001:db8::5"
    assert client_address(INGRESS, ["203.0.113.7:5555"], trusted) == "203.0.113.7"
    assert client_address(INGRESS, [], trusted) == INGRESS
    assert client_address("198.51.100.1", ["203.0.113.7"], trusted) == "198.51.100.1"
    assert client_address("fd00::1", ["::ffff:203.0.113.7"], trusted) == "203.0.113.7"


@pytest.mark.parametrize("value", [["ingress"], ["0.0.0.0/0"], ["::/0"], ["10.9.0.0/16", "x"]])
def test_a_trusted_proxy_setting_that_is_not_a_network_or_trusts_everyone_is_refused(
    value: list[str],
) -> None:
    with pytest.raises(ValidationError, match="trusted_proxies"):
        BrokerSettings(trusted_proxies=value)
    assert BrokerSettings(trusted_proxies=[" 10.9.0.4/16"]).trusted_proxies == ["10.9.0.0/16"]
