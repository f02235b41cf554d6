"""One definition of names, refused alike everywhere: API, SSH login names, gateway config.

``alice`` and ``alice\\n`` must never both exist; a leading ``-`` (an option
to some program down the line) and Unicode look-alikes are refused too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.outbox import CursorStore, OutboxError
from broker.frontdoor.auth import parse_login, valid_instrument_name
from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.control.apihelp import auth, client_for, session_token
from tests.control.conftest import PASSWORD, World
from tests.gateway.configs import GOOD

BAD = [
    "alice\n",
    "alice\r\n",
    "-x",
    "\u0430lice",  # Cyrillic а
    "\uff41lice",
    "al\u0131ce",
    "alice ",
    "",
    "a" * 64,
]  # fullwidth a, dotless i
BAD_SLUGS = [b.replace("alice", "cobas") for b in BAD] + ["cobas-", "Cobas", "co_bas"]


@pytest.mark.parametrize("name", BAD)
def test_the_api_refuses_bad_user_names(world: World, name: str) -> None:
    c = client_for(world.s)
    root = auth(session_token(world.s, world.s.people.show_user(world.admin, "root")))
    r = c.post(
        "/v1/users",
        headers=root,
        json={
            "name": name,
            "full_name": "Alice",
            "org": "hoshi-hospital",
            "roles": ["approver"],
            "password": PASSWORD,
        },
    )
    assert r.status_code == 422, r.text
    assert all(u["name"] != name for u in c.get("/v1/users", headers=root).json())


def test_alice_and_alice_newline_cannot_both_exist(world: World) -> None:
    c = client_for(world.s)
    root = auth(session_token(world.s, world.s.people.show_user(world.admin, "root")))
    body = {
        "full_name": "Alice",
        "org": "hoshi-hospital",
        "roles": ["approver"],
        "password": PASSWORD,
    }
    assert c.post("/v1/users", headers=root, json={**body, "name": "alice"}).status_code == 201
    assert c.post("/v1/users", headers=root, json={**body, "name": "alice\n"}).status_code == 422
    names = [u["name"] for u in c.get("/v1/users", headers=root).json()]
    assert names.count("alice") == 1 and "alice\n" not in names


@pytest.mark.parametrize("name", BAD_SLUGS)
def test_the_api_refuses_bad_organisation_and_instrument_names(world: World, name: str) -> None:
    c = client_for(world.s)
    root = auth(session_token(world.s, world.s.people.show_user(world.admin, "root")))
    assert (
        c.post("/v1/orgs", headers=root, json={"name": name, "kind": "vendor"}).status_code == 422
    )
    r = c.post(
        "/v1/instruments",
        headers=root,
        json={"hospital": "hoshi-hospital", "name": name, "host": "10.0.0.99", "ports": [22]},
    )
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("name", BAD)
def test_the_ssh_front_door_refuses_bad_login_names(name: str) -> None:
    assert parse_login(name) is None
    assert parse_login(f"{name}+cobas-1") is None
    assert parse_login("eng+cobas-1") is not None


@pytest.mark.parametrize("name", BAD_SLUGS)
def test_the_ssh_front_door_refuses_bad_instrument_names(name: str) -> None:
    assert parse_login(f"eng+{name}") is None
    assert not valid_instrument_name(name)


@pytest.mark.parametrize("name", BAD_SLUGS)
def test_the_gateway_refuses_bad_names_in_its_configuration(name: str) -> None:
    quoted = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    with pytest.raises(ConfigError, match="name"):
        parse_config(GOOD.replace('name = "cobas-c503-1"', f'name = "{quoted}"'))
    with pytest.raises(ConfigError, match="name"):
        parse_config(GOOD.replace('name = "gw1"', f'name = "{quoted}"'))


@pytest.mark.parametrize("sink", ["fluentd\n", "-fluentd", "flu\u0435ntd"])
def test_audit_sink_names_are_matched_whole(tmp_path: Path, sink: str) -> None:
    """A sink name becomes a cursor file name: a trailing newline must not slip in."""
    with pytest.raises(OutboxError):
        CursorStore(tmp_path).path(sink)
    assert CursorStore(tmp_path).path("fluentd").name == "fluentd.cursor"
