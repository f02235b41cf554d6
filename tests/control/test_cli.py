"""The real ``hoshu`` CLI against a live API server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from broker.access import totp
from tests.control.apihelp import session_token
from tests.control.conftest import PASSWORD, SQLITE_ONLY, Cli, World, openssh_public_key
from tests.support import free_port, poll_sync


@SQLITE_ONLY
def test_engineer_and_approver_daily_work(cli: Cli, world: World, tmp_path: Path) -> None:
    w = world
    code, out, _ = cli("--json", "login", "--user", "eng", "--password-stdin", stdin=PASSWORD)
    assert code == 0 and json.loads(out)["totp_enrolment_required"] is True
    token_file = tmp_path / "cfg" / "token.json"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    code, out, _ = cli("--json", "totp", "enroll")
    uri = json.loads(out)["otpauth_uri"]
    secret = uri.split("secret=")[1].split("&")[0]
    code, out, _ = cli("totp", "confirm", totp.code_at(secret, w.clock()))
    assert code == 0 and "TOTP enrolled" in out
    keyfile = tmp_path / "id.pub"
    keyfile.write_text(openssh_public_key() + " eng@laptop\n")
    assert cli("keys", "add", str(keyfile))[0] == 0
    code, out, err = cli(
        "--json",
        "request",
        "cobas-1",
        "--duration",
        "30m",
        "--reason",
        "replace probe",
        "--ticket",
        "INC-7",
        "--plan",
        "作業計画: 1. stop",
    )
    assert code == 0, err
    rid = json.loads(out)["id"]
    code, out, _ = cli("requests")
    assert code == 0 and "pending" in out and "cobas-1" in out

    appr_secret = w.enrol_totp("appr")
    code, out, err = cli(
        "login",
        "--user",
        "appr",
        "--password-stdin",
        "--totp",
        totp.code_at(appr_secret, w.clock()),
        stdin=PASSWORD,
    )
    assert code == 0 and "Signed in as" in out, err
    code, out, _ = cli("--json", "approve", rid, "--comment", "go ahead")
    grant = json.loads(out)["grant"]
    assert grant["status"] == "active" and grant["ports"] == [22]
    code, out, _ = cli("--json", "grants", "--live")
    assert [g["id"] for g in json.loads(out)] == [grant["id"]]
    code, out, _ = cli("revoke", grant["id"], "--comment", "finished")
    assert code == 0 and "revoked" in out
    code, out, _ = cli("requests", rid)
    assert "History" in out and "revoked" in out and "作業計画" in out
    code, _, err = cli("passwd", "--password-stdin", stdin=f"{PASSWORD}\nPassword123!\n")
    assert code == 1 and "known-bad" in err
    code, _, err = cli(
        "passwd", "--password-stdin", stdin="wrong-current-pw\nx-long-new-passphrase\n"
    )
    assert code == 1 and "current password" in err
    code, out, _ = cli("passwd", "--password-stdin", stdin=f"{PASSWORD}\nanother-long-passphrase\n")
    assert code == 0 and "changed" in out
    w.clock.advance(30)
    assert w.s.auth.login(
        "appr", "another-long-passphrase", totp.code_at(appr_secret, w.clock())
    ).scopes == ("*",)
    code, _, err = cli("approve", "no-such-request")
    assert code == 1 and "no request" in err
    assert cli("logout")[0] == 0 and not token_file.exists()
    code, _, err = cli("requests")
    assert code == 1 and "hoshu login" in err


@SQLITE_ONLY
def test_admin_commands_and_gateway_token(
    cli: Cli,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = next(u for u in world.s.people.list_users(world.admin) if u.name == "root")
    monkeypatch.setenv("HOSHU_TOKEN", session_token(world.s, root))
    steps = [
        ("admin", "orgs", "create", "gamma-labs", "--kind", "vendor"),
        ("admin", "orgs", "set-sources", "gamma-labs", "--source", "192.0.2.0/24"),
        (
            "admin",
            "instruments",
            "create",
            "hem-1",
            "--hospital",
            "hoshi-hospital",
            "--host",
            "10.0.0.77",
            "--port",
            "22",
            "--criticality",
            "critical",
        ),
        (
            "admin",
            "contracts",
            "create",
            "--vendor",
            "gamma-labs",
            "--hospital",
            "hoshi-hospital",
            "--instrument",
            "hem-1",
        ),
        (
            "admin",
            "policy",
            "set",
            "hoshi-hospital",
            "--approvals",
            "1",
            "--hours",
            "08:00-20:00",
            "--emergency",
            "yes",
            "--emergency-max-duration",
            "30m",
            "--clipboard",
            "yes",
            "--drive",
            "yes",
        ),
    ]
    for argv in steps:
        code, out, err = cli(*argv)
        assert code == 0, (argv, err)
    code, out, err = cli(
        "admin",
        "users",
        "create",
        "kato",
        "--full-name",
        "Kato Ken",
        "--org",
        "gamma-labs",
        "--role",
        "engineer",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert code == 0, err
    code, out, err = cli(
        "admin",
        "instruments",
        "credential",
        "hem-1",
        "--secret-stdin",
        "--login-username",
        "svc",
        stdin="Very-Secret-Pw-1!",
    )
    assert code == 0 and "write-only" in out and "Very-Secret" not in out
    code, out, _ = cli("--json", "admin", "policy", "show", "hoshi-hospital")
    policy = json.loads(out)
    assert policy["hours_start"] == "08:00" and policy["emergency_allowed"] is True
    assert policy["clipboard_allowed"] is True and policy["drive_allowed"] is True
    code, out, _ = cli("--json", "admin", "instruments", "show", "hem-1")
    assert json.loads(out)["credential_set"] is True and "Very-Secret" not in out
    code, out, err = cli("gateway", "token", "--hospital", "hoshi-hospital", "--ttl-s", "600")
    assert code == 0 and out.startswith("hoshu-enroll-v1.") and "valid until" in err
    code, out, _ = cli("--json", "admin", "users", "list")
    assert "kato" in [u["name"] for u in json.loads(out)]
    code, _, err = cli("admin", "orgs", "create", "Bad Name", "--kind", "vendor")
    assert code == 1 and "organisation name" in err


@SQLITE_ONLY
def test_an_rdp_instruments_keyboard_layout_is_set_and_an_unknown_one_refused(
    cli: Cli, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--keyboard-layout`` sets the keyboard an RDP desktop is typed on (en-US by
    default); a layout hoshu does not know is refused with the values it knows, and the
    instrument keeps the one it had."""
    root = next(u for u in world.s.people.list_users(world.admin) if u.name == "root")
    monkeypatch.setenv("HOSHU_TOKEN", session_token(world.s, root))
    base = ("admin", "instruments")
    where = ("--hospital", "hoshi-hospital", "--host", "10.0.0.78", "--port", "3389")
    code, out, err = cli("--json", *base, "create", "an-pc-7", *where, "--protocol", "rdp")
    assert code == 0, err
    assert json.loads(out)["keyboard_layout"] == "en-US"
    code, out, err = cli("--json", *base, "set", "an-pc-7", "--keyboard-layout", "ja-JP")
    assert code == 0, err
    assert json.loads(out)["keyboard_layout"] == "ja-JP"
    code, out, _ = cli(*base, "show", "an-pc-7")
    assert code == 0 and "ja-JP" in out
    for bad in ("jp", "de-DE", "ja_JP"):
        code, out, err = cli(*base, "set", "an-pc-7", "--keyboard-layout", bad)
        assert code == 1 and "keyboard_layout must be one of en-US, ja-JP" in err, (bad, err)
    code, _, err = cli(*base, "create", "an-pc-8", *where, "--keyboard-layout", "us")
    assert code == 1 and "keyboard_layout must be one of en-US, ja-JP" in err
    code, out, _ = cli("--json", *base, "show", "an-pc-7")
    assert json.loads(out)["keyboard_layout"] == "ja-JP"
    code, out, _ = cli("--json", *base, "list")
    assert [i["name"] for i in json.loads(out) if i["name"].startswith("an-pc")] == ["an-pc-7"]


def test_bootstrap_serve_and_sign_in_as_separate_processes(tmp_path: Path) -> None:
    """The installed entry point end to end: db upgrade, bootstrap, serve, login."""
    hoshu = str(Path(sys.executable).parent / "hoshu")
    env = {
        **os.environ,
        "HOSHU_DATA_DIR": str(tmp_path / "data"),
        "HOSHU_CONFIG_DIR": str(tmp_path / "cfg"),
    }
    env.pop("HOSHU_TOKEN", None)
    r = subprocess.run(
        [hoshu, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60
    )
    versions = Path(__file__).parents[2] / "broker" / "store" / "migrations" / "versions"
    head = max(f.name[:4] for f in versions.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert r.returncode == 0 and head in r.stdout, r.stderr  # upgraded to the newest
    r = subprocess.run(
        [
            hoshu,
            "--json",
            "admin",
            "bootstrap",
            "--name",
            "root",
            "--full-name",
            "First Admin",
            "--password-stdin",
        ],
        env=env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    secret = json.loads(r.stdout)["totp_secret"]
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    # the front door and the tunnel endpoint too: a port in use stops the broker
    env.update(HOSHU_SSH_PORT=str(free_port()), HOSHU_TUNNEL_PORT=str(free_port()))
    proc = subprocess.Popen(
        [hoshu, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(f"{api}/v1/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        poll_sync(healthy, 30, "hoshu serve to come up", interval_s=0.05)
        from datetime import UTC, datetime

        code = totp.code_at(secret, datetime.now(UTC))
        r = subprocess.run(
            [hoshu, "login", "--api", api, "--user", "root", "--password-stdin", "--totp", code],
            env=env,
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0 and "Signed in as" in r.stdout, r.stderr
        cached = json.loads((tmp_path / "cfg" / "token.json").read_text())
        me = httpx.get(
            f"{api}/v1/me", timeout=5, headers={"Authorization": f"Bearer {cached['access_token']}"}
        ).json()
        assert me["roles"] == ["platform_admin"] and me["totp_enrolled"]
        assert (tmp_path / "data" / "audit" / "audit.log").stat().st_size > 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
