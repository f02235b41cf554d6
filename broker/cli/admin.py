"""Administration: ``hoshu admin ...`` (bootstrap, orgs, users, contracts, policy,
instruments and their credentials) and ``hoshu gateway ...`` (enrolment tokens).

``hoshu admin bootstrap`` works on the database directly (there is nobody to
sign in as yet); everything else goes through the API with the signed-in
person's rights.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime, time
from pathlib import Path
from typing import Any

from broker.cli.client import Client, CliError, add_api_argument, run
from broker.cli.output import console, done, emit_json, show, wants_json
from broker.cli.requests import parse_duration

ORG_COLUMNS = [("name", "Name"), ("kind", "Kind"), ("active", "Active"), ("id", "Id")]
USER_COLUMNS = [("name", "User"), ("full_name", "Name"), ("roles", "Roles"),
                ("active", "Active"), ("expires_at", "Expires"), ("totp_enrolled", "TOTP"),
                ("recertified_at", "Recertified")]
CONTRACT_COLUMNS = [("id", "Id"), ("vendor_id", "Vendor"), ("hospital_id", "Hospital"),
                    ("instruments", "Instruments"), ("valid_until", "Until"),
                    ("active", "Active"), ("reference", "Reference")]
INSTRUMENT_COLUMNS = [("name", "Name"), ("host", "Host"), ("ports", "Ports"),
                      ("protocol", "Protocol"), ("department", "Dept"), ("model", "Model"),
                      ("criticality", "Criticality"), ("credential_set", "Credential"),
                      ("host_key_fingerprint", "Host key"),
                      ("pending_host_key_fingerprint", "Changed key (blocked)")]
GATEWAY_COLUMNS = [("name", "Name"), ("id", "Id"), ("active", "Active"),
                   ("version", "Version"), ("key_fingerprint", "Key"),
                   ("last_inventory_at", "Last inventory")]


def _secret_from(args: argparse.Namespace, prompt: str, *, confirm: bool = False) -> str:
    if getattr(args, "password_stdin", False) or getattr(args, "secret_stdin", False):
        text = sys.stdin.read() if getattr(args, "secret_stdin", False) else \
            sys.stdin.readline()
        if not text.strip():
            raise CliError("nothing on standard input")
        return text.rstrip("\r\n") if not getattr(args, "secret_stdin", False) else text
    if getattr(args, "secret_file", None):
        return Path(args.secret_file).read_text()
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Again: ") != first:
        raise CliError("the two entries differ")
    return first


def _when(text: str | None) -> str | None:
    if text is None or text in ("never", "none"):
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"{text!r}: use an ISO 8601 date or time") from exc
    if t.tzinfo is None:
        t = t.astimezone()
    return t.isoformat()


def _yes(text: str | None) -> bool | None:
    return None if text is None else text.lower() in ("yes", "y", "true", "on", "1")


# --- bootstrap ---------------------------------------------------------------
@run
def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Create the first platform admin directly in the database; print the TOTP secret."""
    from broker.access import totp
    from broker.access.errors import AccessError
    from broker.cli.people import qr_text
    from broker.services import ControlPlane
    from broker.settings import BrokerSettings

    settings = BrokerSettings(data_dir=Path(args.data_dir)) if args.data_dir \
        else BrokerSettings()
    password = _secret_from(args, "Password for the first admin: ", confirm=True)
    try:
        cp = ControlPlane.open(settings)
    except Exception as exc:  # database, key files or audit log unusable
        raise CliError(f"cannot open the broker's data in {settings.data_dir}: {exc}") from exc
    try:
        user, secret = cp.services.auth.bootstrap(args.name, args.full_name, password)
    except AccessError as exc:
        raise CliError(exc.message) from exc
    finally:
        cp.close()
    uri = totp.provisioning_uri(secret, user.name)
    if wants_json(args):
        emit_json({"user": user.name, "user_id": user.id, "totp_secret": secret,
                   "otpauth_uri": uri})
        return 0
    c = console()
    c.print(f"Platform admin [bold]{user.name}[/bold] created. Add this TOTP secret to "
            "an authenticator app now; it is not shown again:")
    sys.stdout.write(qr_text(uri))
    c.print(f"secret: [bold]{secret}[/bold]")
    return 0


# --- through the API ------------------------------------------------------------
@run
def cmd_orgs(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    if args.action == "create":
        if not (args.name and args.kind):
            raise CliError("usage: hoshu admin orgs create NAME --kind hospital|vendor")
        org = client.call("POST", "/v1/orgs", {"name": args.name, "kind": args.kind,
                                                "source_cidrs": args.source or []})
        done(args, org, f"Created {org['kind']} {org['name']} ({org['id']}).")
    elif args.action == "set-sources":
        if not args.name:
            raise CliError("usage: hoshu admin orgs set-sources NAME [--source NET ...]")
        org = client.call("PATCH", f"/v1/orgs/{args.name}",
                          {"source_cidrs": args.source or []})
        done(args, org, f"{org['name']} may sign in from: "
                        f"{', '.join(org['source_cidrs']) or 'anywhere'}.")
    else:
        show(args, client.call("GET", "/v1/orgs"), ORG_COLUMNS, "Organisations")
    return 0


@run
def cmd_users(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    a, name = args.action, args.name
    if a not in ("list", "vendor-accounts") and not name:
        raise CliError(f"usage: hoshu admin users {a} NAME ...")
    if a == "create":
        if not (args.full_name and args.org and args.role):
            raise CliError("create needs --full-name, --org and --role")
        pw = _secret_from(args, f"Initial password for {name}: ", confirm=True)
        u = client.call("POST", "/v1/users", {
            "name": name, "full_name": args.full_name, "org": args.org, "roles": args.role,
            "password": pw, "expires_at": _when(args.expires), "email": args.email or ""})
        done(args, u, f"Created {u['name']} ({', '.join(u['roles'])}); they enrol TOTP at "
                      "first sign-in.")
    elif a == "expire":
        u = client.call("POST", f"/v1/users/{name}/expire", {"expires_at": _when(args.at)})
        done(args, u, f"{u['name']} expires {u['expires_at'] or 'never'}.")
    elif a == "deactivate":
        u = client.call("POST", f"/v1/users/{name}/deactivate")
        done(args, u, f"{u['name']} deactivated; tokens and sessions end now.")
    elif a == "recertify":
        u = client.call("POST", f"/v1/users/{name}/recertify",
                        {"comment": args.comment or ""})
        done(args, u, f"{u['name']} recertified.")
    elif a == "reset-totp":
        u = client.call("POST", f"/v1/users/{name}/reset-totp")
        done(args, u, f"TOTP of {u['name']} reset; they enrol again at their next sign-in.")
    elif a == "revoke-tokens":
        r = client.call("POST", f"/v1/users/{name}/revoke-tokens")
        done(args, r, f"Revoked {r['tokens']} token(s) and {len(r['cert_serials'])} SSH "
                      f"certificate(s) of {r['user']}.")
    elif a == "set-password":
        pw = _secret_from(args, f"New password for {name}: ", confirm=True)
        u = client.call("POST", f"/v1/users/{name}/password", {"password": pw})
        done(args, u, f"Password of {u['name']} set.")
    elif a == "add-key":
        if not args.key_file:
            raise CliError("add-key needs --key-file")
        k = client.call("POST", f"/v1/users/{name}/keys",
                        {"public_key": Path(args.key_file).read_text().strip()})
        done(args, k, f"Registered {k['fingerprint']} for {name}.")
    elif a == "show":
        show(args, client.call("GET", f"/v1/users/{name}"), USER_COLUMNS)
    elif a == "vendor-accounts":
        params = {"hospital": args.hospital} if args.hospital else None
        show(args, client.call("GET", "/v1/vendor-accounts", params=params), USER_COLUMNS,
             "Vendor accounts that can reach the hospital")
    else:
        params = {"org": args.org} if args.org else None
        show(args, client.call("GET", "/v1/users", params=params), USER_COLUMNS, "Users")
    return 0


@run
def cmd_contracts(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    if args.action == "create":
        if not (args.vendor and args.hospital and args.instrument):
            raise CliError("create needs --vendor, --hospital and --instrument (or '*')")
        c = client.call("POST", "/v1/contracts", {
            "vendor": args.vendor, "hospital": args.hospital, "instruments": args.instrument,
            "valid_until": _when(args.until), "reference": args.reference or ""})
        done(args, c, f"Contract {c['id']} created.")
    elif args.action == "end":
        if not args.id:
            raise CliError("usage: hoshu admin contracts end ID")
        done(args, client.call("POST", f"/v1/contracts/{args.id}/end"), "Contract ended.")
    else:
        show(args, client.call("GET", "/v1/contracts"), CONTRACT_COLUMNS, "Contracts")
    return 0


@run
def cmd_policy(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    if args.action == "set":
        changes: dict[str, Any] = {}
        if args.max_duration:
            changes["max_duration_s"] = parse_duration(args.max_duration)
        if args.approvals:
            changes["approvals_required"] = args.approvals
        if args.critical_approvals:
            changes["critical_approvals_required"] = args.critical_approvals
        if args.hours:
            if args.hours == "any":
                changes["hours_start"] = changes["hours_end"] = ""
            else:
                start, _, end = args.hours.partition("-")
                for t in (start, end):
                    try:
                        time.fromisoformat(t)
                    except ValueError as exc:
                        raise CliError("--hours takes HH:MM-HH:MM or 'any'") from exc
                changes["hours_start"], changes["hours_end"] = start, end
        if args.timezone:
            changes["timezone"] = args.timezone
        for flag, key in (("file_transfer", "file_transfer_allowed"),
                          ("emergency", "emergency_allowed"),
                          ("record_input", "record_input")):
            if _yes(getattr(args, flag)) is not None:
                changes[key] = _yes(getattr(args, flag))
        if args.emergency_max_duration:
            changes["emergency_max_duration_s"] = parse_duration(args.emergency_max_duration)
        if args.request_ttl:
            changes["request_ttl_s"] = parse_duration(args.request_ttl)
        p = client.call("PATCH", f"/v1/policies/{args.hospital}", changes)
    else:
        p = client.call("GET", f"/v1/policies/{args.hospital}")
    if wants_json(args):
        emit_json(p)
    else:
        show(args, [{"setting": k, "value": v} for k, v in p.items()],
             [("setting", "Setting"), ("value", "Value")], f"Policy of {args.hospital}")
    return 0


def _instrument_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {"host": args.host, "gateway": args.gateway, "ssh_port": args.ssh_port,
              "ports": args.port, "protocol": args.protocol, "department": args.department,
              "model": args.model, "vendor": args.vendor, "criticality": args.criticality,
              "login_username": args.login_username}
    return {k: v for k, v in fields.items() if v is not None}


@run
def cmd_instruments(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    a, name = args.action, args.name
    if a != "list" and not name:
        raise CliError(f"usage: hoshu admin instruments {a} NAME ...")
    if a == "create":
        body = {"name": name, "hospital": args.hospital, **_instrument_fields(args)}
        i = client.call("POST", "/v1/instruments", body)
        done(args, i, f"Instrument {i['name']} registered.")
    elif a == "set":
        i = client.call("PATCH", f"/v1/instruments/{name}", _instrument_fields(args))
        done(args, i, f"Instrument {i['name']} updated.")
    elif a == "credential":
        secret = _secret_from(args, f"Credential for {name}: ")
        i = client.call("PUT", f"/v1/instruments/{name}/credential", {
            "kind": args.kind, "secret": secret, "username": args.login_username})
        done(args, i, f"Credential for {i['name']} stored (write-only).")
    elif a == "accept-key":
        if not args.fingerprint:
            raise CliError("accept-key needs --fingerprint SHA256:...")
        i = client.call("POST", f"/v1/instruments/{name}/accept-host-key",
                        {"fingerprint": args.fingerprint})
        done(args, i, f"Host key of {i['name']} accepted; sessions may resume.")
    elif a == "show":
        show(args, client.call("GET", f"/v1/instruments/{name}"), INSTRUMENT_COLUMNS)
    else:
        show(args, client.call("GET", "/v1/instruments"), INSTRUMENT_COLUMNS, "Instruments")
    return 0


@run
def cmd_gateway(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    if args.action == "token":
        t = client.call("POST", "/v1/gateways/tokens",
                        {"hospital": args.hospital, "ttl_s": args.ttl_s})
        if wants_json(args):
            emit_json(t)
        else:
            sys.stdout.write(t["token"] + "\n")
            print(f"one-time enrolment token for {t['hospital']}, valid until "
                  f"{t['expires_at']}", file=sys.stderr)
    elif args.action == "revoke":
        if not args.name:
            raise CliError("usage: hoshu gateway revoke NAME")
        done(args, client.call("POST", f"/v1/gateways/{args.name}/revoke"), "Revoked.")
    else:
        show(args, client.call("GET", "/v1/gateways"), GATEWAY_COLUMNS, "Gateways")
    return 0


def register(sub: Any) -> None:
    admin = sub.add_parser("admin", help="administration (orgs, users, contracts, ...)")
    adm = admin.add_subparsers(dest="admin_command", metavar="AREA", required=True)

    p = adm.add_parser("bootstrap", help="create the first platform admin (on the database)")
    p.add_argument("--name", required=True)
    p.add_argument("--full-name", required=True)
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--data-dir", help="broker data directory (env HOSHU_DATA_DIR)")
    p.set_defaults(func=cmd_bootstrap)

    p = adm.add_parser("orgs", help="organisations")
    add_api_argument(p)
    p.add_argument("action", nargs="?", choices=["list", "create", "set-sources"],
                   default="list")
    p.add_argument("name", nargs="?")
    p.add_argument("--kind", choices=["hospital", "vendor"])
    p.add_argument("--source", action="append", help="allowed source network (vendors)")
    p.set_defaults(func=cmd_orgs)

    p = adm.add_parser("users", help="user accounts")
    add_api_argument(p)
    p.add_argument("action", nargs="?", default="list", choices=[
        "list", "show", "create", "expire", "deactivate", "recertify", "reset-totp",
        "set-password", "revoke-tokens", "add-key", "vendor-accounts"])
    p.add_argument("name", nargs="?")
    p.add_argument("--full-name")
    p.add_argument("--org")
    p.add_argument("--role", action="append", choices=[
        "engineer", "approver", "hospital_admin", "auditor", "platform_admin"])
    p.add_argument("--expires", help="account expiry (ISO date)")
    p.add_argument("--at", help="new expiry for `expire` (ISO date or 'never')")
    p.add_argument("--email")
    p.add_argument("--comment")
    p.add_argument("--hospital")
    p.add_argument("--key-file")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=cmd_users)

    p = adm.add_parser("contracts", help="vendor ↔ hospital contracts")
    add_api_argument(p)
    p.add_argument("action", nargs="?", choices=["list", "create", "end"], default="list")
    p.add_argument("id", nargs="?")
    p.add_argument("--vendor")
    p.add_argument("--hospital")
    p.add_argument("--instrument", action="append")
    p.add_argument("--until")
    p.add_argument("--reference")
    p.set_defaults(func=cmd_contracts)

    p = adm.add_parser("policy", aliases=["policies"], help="a hospital's access policy")
    add_api_argument(p)
    p.add_argument("action", choices=["show", "set"])
    p.add_argument("hospital")
    p.add_argument("--max-duration")
    p.add_argument("--approvals", type=int, choices=[1, 2])
    p.add_argument("--critical-approvals", type=int, choices=[1, 2])
    p.add_argument("--hours", help="HH:MM-HH:MM (hospital time) or 'any'")
    p.add_argument("--timezone")
    p.add_argument("--file-transfer", choices=["yes", "no"])
    p.add_argument("--emergency", choices=["yes", "no"])
    p.add_argument("--record-input", choices=["yes", "no"],
                   help="record what engineers type in shells (default no)")
    p.add_argument("--emergency-max-duration")
    p.add_argument("--request-ttl")
    p.set_defaults(func=cmd_policy)

    p = adm.add_parser("instruments", help="instruments and their credentials")
    add_api_argument(p)
    p.add_argument("action", nargs="?", default="list", choices=[
        "list", "show", "create", "set", "credential", "accept-key"])
    p.add_argument("name", nargs="?")
    p.add_argument("--hospital")
    p.add_argument("--host")
    p.add_argument("--gateway")
    p.add_argument("--ssh-port", type=int)
    p.add_argument("--port", type=int, action="append")
    p.add_argument("--protocol")
    p.add_argument("--department")
    p.add_argument("--model")
    p.add_argument("--vendor")
    p.add_argument("--criticality", choices=["low", "normal", "high", "critical"])
    p.add_argument("--login-username")
    p.add_argument("--kind", choices=["password", "private_key"], default="password")
    p.add_argument("--secret-file", help="read the credential from a file")
    p.add_argument("--secret-stdin", action="store_true")
    p.add_argument("--fingerprint")
    p.set_defaults(func=cmd_instruments)

    gw = sub.add_parser("gateway", help="hospital gateways: enrolment tokens, list, revoke")
    add_api_argument(gw)
    gw.add_argument("action", nargs="?", choices=["token", "list", "revoke"], default="list")
    gw.add_argument("name", nargs="?", help="gateway (revoke)")
    gw.add_argument("--hospital")
    gw.add_argument("--ttl-s", type=int, default=3600)
    gw.set_defaults(func=cmd_gateway)
