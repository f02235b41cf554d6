"""``hoshu ssh-cert``: a certificate after password + TOTP, then stock ssh needs no code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request

from broker.api import errors
from broker.api.routes.certs import build_cert_router
from broker.cli.main import main
from tests.frontdoor.harness import World, run
from tests.support import poll_sync


@dataclass(frozen=True)
class Caller:
    user_id: str
    username: str
    roles: frozenset[str]
    scopes: frozenset[str]
    token_kind: str
    org_id: str = "v-1"
    org_kind: str = "vendor"


TOKENS = {
    "mfa": Caller("u-alice", "alice", frozenset({"engineer"}), frozenset({"*"}), "session"),
    "enrol-only": Caller(
        "u-alice", "alice", frozenset({"engineer"}), frozenset({"enroll"}), "session"
    ),
    "api": Caller("u-alice", "alice", frozenset({"engineer"}), frozenset({"*"}), "api"),
}


@pytest.fixture
def api(granted: World) -> Iterator[str]:
    w = granted

    def authenticate(request: Request) -> Caller:
        return TOKENS[request.headers["authorization"].removeprefix("Bearer ")]

    def grants_end(user_id: str, now: datetime) -> datetime | None:
        ends = [g.ends for g in w.policy.grants if g.user_id == user_id and now < g.ends]
        return max(ends) if ends else None

    app = FastAPI()
    errors.install(app)
    app.include_router(
        build_cert_router(
            lambda: w.door.ca, w.policy, grants_end, w.events, w.clock, authenticate=authenticate
        )
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    poll_sync(lambda: server.started, 5, "the certificate API to start", interval_s=0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


async def test_certificate_after_mfa_logs_in_without_a_code(
    granted: World,
    api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = granted
    monkeypatch.setenv("HOSHU_TOKEN", "mfa")
    out = tmp_path / "cert.pub"
    rc = await asyncio.to_thread(
        main, ["ssh-cert", "--api", api, "--key", str(w.tmp / "id_engineer.pub"), "--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    r = await run(
        w.ssh_argv(
            batch=True, extra=("-o", f"CertificateFile={out}", w.login(), "echo no-code-needed")
        ),
        w.env(),
    )
    assert r.rc == 0, r.err
    issued = w.events.of_type("ssh.cert_issued")[0]
    until = datetime.fromisoformat(issued.details["valid_until"])
    assert until == w.clock.now + timedelta(hours=1)  # the grant's end, sooner than 8 h


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("enrol-only", "sign in with password and TOTP"),
        ("api", "sign in with password and TOTP"),
    ],
)
async def test_certificate_refused_without_a_full_mfa_sign_in(
    granted: World,
    api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str,
    message: str,
) -> None:
    monkeypatch.setenv("HOSHU_TOKEN", token)
    rc = await asyncio.to_thread(
        main,
        [
            "ssh-cert",
            "--api",
            api,
            "--key",
            str(granted.tmp / "id_engineer.pub"),
            "--out",
            str(tmp_path / "c.pub"),
        ],
    )
    assert rc == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.pub").exists()


async def test_certificate_refused_for_an_unregistered_key_or_without_grant(
    granted: World,
    api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncssh

    monkeypatch.setenv("HOSHU_TOKEN", "mfa")
    other = tmp_path / "other.pub"
    other.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    rc = await asyncio.to_thread(
        main, ["ssh-cert", "--api", api, "--key", str(other), "--out", str(tmp_path / "c.pub")]
    )
    assert rc == 1 and "not one of your registered SSH keys" in capsys.readouterr().err
    granted.policy.grants.clear()
    rc = await asyncio.to_thread(
        main,
        [
            "ssh-cert",
            "--api",
            api,
            "--key",
            str(granted.tmp / "id_engineer.pub"),
            "--out",
            str(tmp_path / "c.pub"),
        ],
    )
    assert rc == 1 and "no active grant" in capsys.readouterr().err
