"""``hoshu login``, ``logout``, ``whoami``, ``totp``, ``keys`` and ``tokens``.

Sign-in needs the password and a TOTP code.  A person signing in for the first
time gets a token that can only enrol TOTP: ``hoshu totp enroll`` shows the
secret as a QR code for an authenticator app, then ``hoshu totp confirm CODE``
(or the interactive prompt) finishes enrolment and signs in fully.
"""

from __future__ import annotations

import argparse
import getpass
import io
import os
import sys
from pathlib import Path
from typing import Any

import qrcode

from broker.cli.client import (
    Client,
    CliError,
    add_action,
    add_actions,
    add_api_argument,
    api_url,
    forget_token,
    load_token,
    run,
    save_token,
)
from broker.cli.output import console, done, emit_json, show, wants_json


def qr_text(uri: str) -> str:
    qr = qrcode.QRCode(border=1)
    qr.add_data(uri)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        if not line:
            raise CliError("no password on standard input")
        return line.rstrip("\r\n")
    return getpass.getpass("Password: ")


def _show_enrolment(args: argparse.Namespace, uri: str) -> None:
    if wants_json(args):
        emit_json({"otpauth_uri": uri})
        return
    c = console()
    c.print("Scan this with your authenticator app (or enter the secret by hand):")
    sys.stdout.write(qr_text(uri))
    secret = uri.split("secret=")[1].split("&")[0] if "secret=" in uri else ""
    c.print(f"secret: [bold]{secret}[/bold]")


@run
def cmd_login(args: argparse.Namespace) -> int:
    """Sign in with password and TOTP; cache the bearer token."""
    username = args.user or os.environ.get("HOSHU_USER") or input("User: ").strip()
    password = _read_password(args)
    code = args.totp
    if code is None and not args.password_stdin and sys.stdin.isatty():
        code = input("TOTP code (empty if not enrolled yet): ").strip() or None
    client = Client(api_url(args))
    data = client.call(
        "POST", "/v1/auth/login", {"username": username, "password": password, "totp_code": code}
    )
    save_token(client.api, username, data)
    if data.get("totp_enrolment_required"):
        if sys.stdin.isatty() and not wants_json(args):
            return _enrol(args, interactive=True)
        done(
            args,
            {**data, "access_token": "[cached]"},
            "Signed in for TOTP enrolment only: run `hoshu totp enroll`.",
        )
        return 0
    done(
        args,
        {"username": username, "expires_at": data["expires_at"], "scopes": data["scopes"]},
        f"Signed in as [bold]{username}[/bold] until {data['expires_at']}.",
    )
    return 0


@run
def cmd_logout(args: argparse.Namespace) -> int:
    token = load_token()
    if token:
        try:
            Client(api_url(args), token).call("POST", "/v1/auth/logout")
        except CliError:
            pass  # an expired token is as good as gone
    forget_token()
    done(args, {"signed_out": True}, "Signed out.")
    return 0


@run
def cmd_passwd(args: argparse.Namespace) -> int:
    """Change your own password (policy: 13+ characters, or 8+ mixed)."""
    if args.password_stdin:
        lines = sys.stdin.read().splitlines()
        if len(lines) < 2:
            raise CliError("give the current and the new password on two lines")
        current, new = lines[0], lines[1]
    else:
        current = getpass.getpass("Current password: ")
        new = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != new:
            raise CliError("the two entries differ")
    Client.from_args(args).call("POST", "/v1/me/password", {"current": current, "new": new})
    done(args, {"changed": True}, "Password changed.")
    return 0


@run
def cmd_whoami(args: argparse.Namespace) -> int:
    me = Client.from_args(args).call("GET", "/v1/me")
    show(
        args,
        me,
        [
            ("name", "User"),
            ("full_name", "Name"),
            ("org_kind", "Org"),
            ("roles", "Roles"),
            ("expires_at", "Account expires"),
            ("totp_enrolled", "TOTP"),
        ],
    )
    return 0


def _enrol(args: argparse.Namespace, *, interactive: bool) -> int:
    client = Client.from_args(args)
    uri = client.call("POST", "/v1/auth/totp/enroll")["otpauth_uri"]
    _show_enrolment(args, uri)
    if not interactive:
        if not wants_json(args):
            console().print("Then run `hoshu totp confirm CODE` with the code it shows.")
        return 0
    code = input("Code from the app: ").strip()
    return _confirm(args, code)


def _confirm(args: argparse.Namespace, code: str) -> int:
    client = Client.from_args(args)
    data = client.call("POST", "/v1/auth/totp/confirm", {"code": code})
    me = Client(client.api, data["access_token"]).call("GET", "/v1/me")
    save_token(client.api, me["name"], data)
    done(
        args,
        {"enrolled": True, "expires_at": data["expires_at"]},
        f"TOTP enrolled; signed in as [bold]{me['name']}[/bold].",
    )
    return 0


@run
def cmd_totp_enroll(args: argparse.Namespace) -> int:
    """Show the TOTP secret as a QR code (and prompt for the first code on a terminal)."""
    return _enrol(args, interactive=sys.stdin.isatty() and not wants_json(args))


@run
def cmd_totp_confirm(args: argparse.Namespace) -> int:
    return _confirm(args, args.code)


_KEY_COLUMNS = [
    ("id", "Id"),
    ("fingerprint", "Fingerprint"),
    ("comment", "Comment"),
    ("created_at", "Added"),
]
_TOKEN_COLUMNS = [
    ("id", "Id"),
    ("name", "Name"),
    ("scopes", "Scopes"),
    ("expires_at", "Expires"),
    ("revoked_at", "Revoked"),
]


@run
def cmd_keys_list(args: argparse.Namespace) -> int:
    show(args, Client.from_args(args).call("GET", "/v1/me/keys"), _KEY_COLUMNS, "SSH keys")
    return 0


@run
def cmd_keys_add(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    line = Path(args.file).expanduser().read_text().strip()
    key = client.call("POST", "/v1/me/keys", {"public_key": line})
    done(args, key, f"Registered {key['fingerprint']}.")
    return 0


@run
def cmd_keys_revoke(args: argparse.Namespace) -> int:
    key = Client.from_args(args).call("POST", f"/v1/me/keys/{args.id}/revoke")
    done(args, key, f"Revoked {key['fingerprint']}.")
    return 0


@run
def cmd_tokens_list(args: argparse.Namespace) -> int:
    show(args, Client.from_args(args).call("GET", "/v1/tokens"), _TOKEN_COLUMNS, "API tokens")
    return 0


@run
def cmd_tokens_create(args: argparse.Namespace) -> int:
    data: Any = Client.from_args(args).call(
        "POST",
        "/v1/tokens",
        {"name": args.name, "scopes": args.scope or ["read"], "ttl_s": args.ttl_s},
    )
    done(args, data, f"API token (shown once, keep it secret):\n{data['access_token']}")
    return 0


@run
def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    done(args, Client.from_args(args).call("POST", f"/v1/tokens/{args.id}/revoke"), "Revoked.")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("login", help="sign in (password + TOTP) and cache a bearer token")
    add_api_argument(p)
    p.add_argument("--user", help="user name (env HOSHU_USER)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--totp", help="TOTP code (prompted on a terminal)")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="give up the cached token")
    add_api_argument(p)
    p.set_defaults(func=cmd_logout)

    p = sub.add_parser("passwd", help="change your password")
    add_api_argument(p)
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the current and the new password from two stdin lines",
    )
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("whoami", help="show the signed-in account")
    add_api_argument(p)
    p.set_defaults(func=cmd_whoami)

    totp = sub.add_parser("totp", help="TOTP enrolment").add_subparsers(
        dest="totp_command", metavar="ACTION", required=True
    )
    p = totp.add_parser("enroll", help="show your TOTP secret as a QR code")
    add_api_argument(p)
    p.set_defaults(func=cmd_totp_enroll)
    p = totp.add_parser("confirm", help="finish enrolment with the first code")
    add_api_argument(p)
    p.add_argument("code")
    p.set_defaults(func=cmd_totp_confirm)

    p = sub.add_parser("keys", help="your SSH public keys (engineers)")
    add_api_argument(p)
    act = add_actions(p, cmd_keys_list)
    add_action(act, "list", cmd_keys_list, "your registered keys")
    add_action(act, "add", cmd_keys_add, "register a public key").add_argument(
        "file", help="public key file, e.g. ~/.ssh/id_ed25519.pub"
    )
    add_action(act, "revoke", cmd_keys_revoke, "revoke a key").add_argument(
        "id", help="key id (hoshu keys list)"
    )

    p = sub.add_parser("tokens", help="API tokens for automation")
    add_api_argument(p)
    act = add_actions(p, cmd_tokens_list)
    add_action(act, "list", cmd_tokens_list, "your API tokens")
    a = add_action(act, "create", cmd_tokens_create, "a new API token (shown once)")
    a.add_argument("name", help="token name")
    a.add_argument("--scope", action="append", choices=["read", "requests", "decisions", "admin"])
    a.add_argument("--ttl-s", type=int, default=30 * 86400)
    add_action(act, "revoke", cmd_tokens_revoke, "revoke a token").add_argument(
        "id", help="token id (hoshu tokens list)"
    )
