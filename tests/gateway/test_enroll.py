"""Enrolment against a stand-in of the control plane's endpoint (contracts.md, exactly)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.enroll import enroll, load_enrollment
from gateway.errors import EnrollmentError

BROKER_KEY = asyncssh.generate_private_key("ssh-ed25519")


def fp(key: asyncssh.SSHKey) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(key.public_data).digest()).decode().rstrip("=")


class StandIn:
    """POST /v1/gateways/enroll: one-time, expiring tokens stored as sha256 of the secret."""

    def __init__(self, broker_key: asyncssh.SSHKey) -> None:
        self.broker_key = broker_key
        self.tokens: dict[str, dict[str, Any]] = {}
        self.enrolled: list[dict[str, Any]] = []

    def issue(self, ttl_s: float = 3600) -> str:
        token_id = f"t{len(self.tokens) + 1}"
        secret = base64.urlsafe_b64encode(hashlib.sha256(token_id.encode()).digest()).decode()
        secret = secret.rstrip("=")[:32]
        self.tokens[token_id] = {
            "hash": hashlib.sha256(secret.encode()).hexdigest(),
            "expires": time.time() + ttl_s,
            "used": False,
        }
        return f"hoshu-enroll-v1.{token_id}.{secret}.{fp(self.broker_key)}"

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        def err(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
            return status, {"error": {"code": code, "message": message}}

        try:
            _, token_id, secret, _ = str(body["token"]).split(".")
        except ValueError:
            return err(401, "invalid_token", "unknown enrolment token")
        t = self.tokens.get(token_id)
        if t is None or hashlib.sha256(secret.encode()).hexdigest() != t["hash"]:
            return err(401, "invalid_token", "unknown enrolment token")
        if t["used"] or t["expires"] < time.time():
            return err(410, "token_gone", "the enrolment token was used or has expired")
        t["used"] = True
        self.enrolled.append(body)
        return 201, {
            "gateway_id": "gw-1",
            "hospital_id": "h-1",
            "hospital": "st-mary",
            "broker_host_key": self.broker_key.export_public_key().decode().strip(),
            "tunnel_host": "127.0.0.1",
            "tunnel_port": 2223,
            "protocol_version": 1,
        }


@pytest.fixture
def broker_api() -> Iterator[tuple[StandIn, str]]:
    stand_in = StandIn(BROKER_KEY)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length", "0")), 65536)
            body = json.loads(self.rfile.read(length))
            status, answer = (
                stand_in.answer(body)
                if self.path == "/v1/gateways/enroll"
                else (404, {"error": {"code": "not_found", "message": "no"}})
            )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stand_in, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def config_file(tmp: Path, api: str) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(
        f'[gateway]\nname = "gw1"\nstate_dir = "{tmp / "state"}"\n[broker]\napi = "{api}"\n'
    )
    return path


def test_enrolment_pins_the_broker_key_and_keeps_the_private_key_home(
    tmp_path: Path, broker_api: tuple[StandIn, str]
) -> None:
    stand_in, api = broker_api
    config = load_config(config_file(tmp_path, api))
    e = enroll(config, stand_in.issue(), version="0.1.0")
    assert e.gateway_id == "gw-1"
    enrollment, key = load_enrollment(config)
    assert asyncssh.import_public_key(enrollment.broker_host_key) == BROKER_KEY.convert_to_public()
    assert stat.S_IMODE(config.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.enrollment_path.stat().st_mode) == 0o600
    sent = stand_in.enrolled[0]
    assert set(sent) == {"token", "public_key", "name", "version"}
    assert "PRIVATE" not in json.dumps(sent)
    assert asyncssh.import_public_key(sent["public_key"]) == key.convert_to_public()


def test_a_reused_token_is_refused_with_a_clear_message(
    tmp_path: Path, broker_api: tuple[StandIn, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stand_in, api = broker_api
    token = stand_in.issue()
    first = tmp_path / "a"
    first.mkdir()
    assert main(["--config", str(config_file(first, api)), "enroll", "--token", token]) == 0
    second = tmp_path / "b"
    second.mkdir()
    assert main(["--config", str(config_file(second, api)), "enroll", "--token", token]) == 1
    err = capsys.readouterr().err
    assert "already used or has expired" in err
    assert not (second / "state" / "enrollment.json").exists()


def test_an_expired_token_is_refused(tmp_path: Path, broker_api: tuple[StandIn, str]) -> None:
    stand_in, api = broker_api
    config = load_config(config_file(tmp_path, api))
    with pytest.raises(EnrollmentError, match="used or has expired"):
        enroll(config, stand_in.issue(ttl_s=-1), version="0.1.0")
    assert not config.enrollment_path.exists()


def test_a_forged_token_is_refused(tmp_path: Path, broker_api: tuple[StandIn, str]) -> None:
    stand_in, api = broker_api
    config = load_config(config_file(tmp_path, api))
    real = stand_in.issue()
    forged = real.replace(real.split(".")[2], "A" * 32)
    with pytest.raises(EnrollmentError, match="not valid"):
        enroll(config, forged, version="0.1.0")
    with pytest.raises(EnrollmentError, match="not a hoshu enrolment token"):
        enroll(config, "hello", version="0.1.0")
    assert not config.enrollment_path.exists()


def test_a_broker_whose_key_does_not_match_the_token_is_not_pinned(
    tmp_path: Path, broker_api: tuple[StandIn, str]
) -> None:
    """A man in the middle (or wrong broker) answering with another key is refused."""
    stand_in, api = broker_api
    config = load_config(config_file(tmp_path, api))
    token = stand_in.issue()
    stand_in.broker_key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(EnrollmentError, match="does not match the fingerprint"):
        enroll(config, token, version="0.1.0")
    assert not config.enrollment_path.exists()
