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

from broker.cli.client import Client, CliError, add_action, add_actions, add_api_argument, run
from broker.cli.output import console, done, emit_json, show, wants_json
from broker.cli.requests import parse_duration

ORG_COLUMNS = [("name", "Name"), ("kind", "Kind"), ("active", "Active"), ("id", "Id")]
USER_COLUMNS = [
    ("name", "User"),
    ("full_name", "Name"),
    ("roles", "Roles"),
    ("active", "Active"),
    ("expires_at", "Expires"),
    ("totp_enrolled", "TOTP"),
    ("recertified_at", "Recertified"),
]
CONTRACT_COLUMNS = [
    ("id", "Id"),
    ("vendor_id", "Vendor"),
    ("hospital_id", "Hospital"),
    ("instruments", "Instruments"),
    ("valid_until", "Until"),
    ("active", "Active"),
    ("reference", "Reference"),
]
INSTRUMENT_COLUMNS = [
    ("name", "Name"),
    ("host", "Host"),
    ("ports", "Ports"),
    ("protocol", "Protocol"),
    ("keyboard_layout", "Keyboard"),
    ("department", "Dept"),
    ("model", "Model"),
    ("criticality", "Criticality"),
    ("credential_set", "Credential"),
    ("host_key_fingerprint", "Host key"),
    ("pending_host_key_fingerprint", "Changed key (blocked)"),
]
GATEWAY_COLUMNS = [
    ("name", "Name"),
    ("id", "Id"),
    ("active", "Active"),
    ("version", "Version"),
    ("key_fingerprint", "Key"),
    ("last_inventory_at", "Last inventory"),
]


def _secret_from(args: argparse.Namespace, prompt: str, *, confirm: bool = False) -> str:
    if getattr(args, "password_stdin", False) or getattr(args, "secret_stdin", False):
        text = sys.stdin.read() if getattr(args, "secret_stdin", False) else sys.stdin.readline()
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

    settings = BrokerSettings(data_dir=Path(args.data_dir)) if args.data_dir else BrokerSettings()
    password = _secret_from(args, "Password for the first admin: ", confirm=True)
    if settings.audit_store == "postgres":
        user, secret = _bootstrap_durable(settings, args, password)
    else:
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
        emit_json(
            {"user": user.name, "user_id": user.id, "totp_secret": secret, "otpauth_uri": uri}
        )
        return 0
    c = console()
    c.print(
        f"Platform admin [bold]{user.name}[/bold] created. Add this TOTP secret to "
        "an authenticator app now; it is not shown again:"
    )
    sys.stdout.write(qr_text(uri))
    c.print(f"secret: [bold]{secret}[/bold]")
    return 0


def _bootstrap_durable(settings: Any, args: argparse.Namespace, password: str) -> Any:
    """Bootstrap with the audit events in the PostgreSQL store (broker.cli.admin_audit)."""
    from audit.errors import ChainError
    from broker.access.errors import AccessError
    from broker.cli.admin_audit import admin_audit_log
    from broker.keys import open_key_store
    from broker.services import ControlPlane

    try:
        keys = open_key_store(settings)
    except Exception as exc:
        raise CliError(f"cannot open the broker's key store: {exc}") from exc
    try:
        with admin_audit_log(settings, keys) as log:
            try:
                cp = ControlPlane.open(settings, emitter=log, keys=keys)
            except Exception as exc:  # database unusable
                raise CliError(f"cannot open the broker's database: {exc}") from exc
            try:
                return cp.services.auth.bootstrap(args.name, args.full_name, password)
            except AccessError as exc:
                raise CliError(exc.message) from exc
            except ChainError as exc:
                raise CliError(f"not done: the audit event could not be stored: {exc}") from exc
            finally:
                cp.close()
    finally:
        keys.close()


# --- the broker's keys (on the broker host: its settings, its key store) ------------
def _broker_settings(args: argparse.Namespace) -> Any:
    from broker.settings import BrokerSettings

    return BrokerSettings(data_dir=Path(args.data_dir)) if args.data_dir else BrokerSettings()


@run
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """A new version of the sealing and/or signing key (files or Key Vault); old versions
    keep opening and verifying.  Brokers use the new one from their next start."""
    from audit import new_event
    from audit.errors import ChainError
    from broker.cli.admin_audit import admin_audit_log
    from broker.keys import ROTATABLE, KeyStoreError, open_key_store

    settings = _broker_settings(args)
    which = list(ROTATABLE) if args.what == "all" else [args.what]
    store = open_key_store(settings)
    made: dict[str, str] = {}
    try:
        # the audit log first (where the broker writes: the PostgreSQL store with that
        # setting): no place to record the rotation, no rotation
        with admin_audit_log(settings, store) as log:
            try:
                for what in which:
                    made[what] = store.rotate(what)
            except KeyStoreError as exc:
                raise CliError(
                    f"{store.where}: {exc}" if not str(exc).startswith("Key Vault") else str(exc)
                ) from exc
            finally:
                for what, version in made.items():
                    log.emit(
                        new_event(
                            "admin.change",
                            ActorUsername=getpass.getuser(),
                            ActorUserType="operator",
                            Operation="key_rotated",
                            ObjectType="key",
                            Object=what,
                            EventMessage=f"{what} key rotated to version {version} ({store.where})",
                        )
                    )
    except ChainError as exc:
        raise CliError(f"the audit event of the rotation failed: {exc}") from exc
    finally:
        store.close()
    done(
        args,
        {"store": store.where, "rotated": made},
        "\n".join(
            f"{what} key: new version {version} in {store.where}; brokers use it from their "
            "next start, older versions keep opening and verifying"
            for what, version in made.items()
        ),
    )
    return 0


@run
def cmd_keys_public(args: argparse.Namespace) -> int:
    """The audit signing key's public half, every version (PEM): what auditors pin."""
    from broker.keys import KeyStoreError, open_key_store

    store = open_key_store(_broker_settings(args))
    try:
        pems = store.signing_public_pems()
    except KeyStoreError as exc:
        raise CliError(str(exc)) from exc
    finally:
        store.close()
    data = {"store": store.where, "keys": [{"version": v, "pem": p.decode()} for v, p in pems]}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for version, pem in pems:
            (out / f"audit-signing-{version}.pem").write_bytes(pem)
        done(
            args,
            data,
            f"{len(pems)} public key(s) written to {out}: pin them outside "
            "the broker for 'hoshu audit verify --key'",
        )
    elif wants_json(args):
        emit_json(data)
    else:
        for _, pem in pems:
            sys.stdout.write(pem.decode())
    return 0


# --- through the API ------------------------------------------------------------
# One function per action; argparse (``register``) declares what each one needs.


@run
def cmd_orgs_list(args: argparse.Namespace) -> int:
    show(args, Client.from_args(args).call("GET", "/v1/orgs"), ORG_COLUMNS, "Organisations")
    return 0


@run
def cmd_orgs_create(args: argparse.Namespace) -> int:
    org = Client.from_args(args).call(
        "POST",
        "/v1/orgs",
        {"name": args.name, "kind": args.kind, "source_cidrs": args.source or []},
    )
    done(args, org, f"Created {org['kind']} {org['name']} ({org['id']}).")
    return 0


@run
def cmd_orgs_set_sources(args: argparse.Namespace) -> int:
    org = Client.from_args(args).call(
        "PATCH", f"/v1/orgs/{args.name}", {"source_cidrs": args.source or []}
    )
    done(
        args,
        org,
        f"{org['name']} may sign in from: {', '.join(org['source_cidrs']) or 'anywhere'}.",
    )
    return 0


@run
def cmd_users_list(args: argparse.Namespace) -> int:
    params = {"org": args.org} if getattr(args, "org", None) else None
    show(
        args, Client.from_args(args).call("GET", "/v1/users", params=params), USER_COLUMNS, "Users"
    )
    return 0


@run
def cmd_users_vendor_accounts(args: argparse.Namespace) -> int:
    params = {"hospital": args.hospital} if args.hospital else None
    show(
        args,
        Client.from_args(args).call("GET", "/v1/vendor-accounts", params=params),
        USER_COLUMNS,
        "Vendor accounts that can reach the hospital",
    )
    return 0


@run
def cmd_users_show(args: argparse.Namespace) -> int:
    show(args, Client.from_args(args).call("GET", f"/v1/users/{args.name}"), USER_COLUMNS)
    return 0


@run
def cmd_users_create(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    name = args.name
    pw = _secret_from(args, f"Initial password for {name}: ", confirm=True)
    u = client.call(
        "POST",
        "/v1/users",
        {
            "name": name,
            "full_name": args.full_name,
            "org": args.org,
            "roles": args.role,
            "password": pw,
            "expires_at": _when(args.expires),
            "email": args.email or "",
        },
    )
    done(
        args, u, f"Created {u['name']} ({', '.join(u['roles'])}); they enrol TOTP at first sign-in."
    )
    return 0


@run
def cmd_users_expire(args: argparse.Namespace) -> int:
    u = Client.from_args(args).call(
        "POST", f"/v1/users/{args.name}/expire", {"expires_at": _when(args.at)}
    )
    done(args, u, f"{u['name']} expires {u['expires_at'] or 'never'}.")
    return 0


@run
def cmd_users_deactivate(args: argparse.Namespace) -> int:
    u = Client.from_args(args).call("POST", f"/v1/users/{args.name}/deactivate")
    done(args, u, f"{u['name']} deactivated; tokens and sessions end now.")
    return 0


@run
def cmd_users_recertify(args: argparse.Namespace) -> int:
    u = Client.from_args(args).call(
        "POST", f"/v1/users/{args.name}/recertify", {"comment": args.comment or ""}
    )
    done(args, u, f"{u['name']} recertified.")
    return 0


@run
def cmd_users_reset_totp(args: argparse.Namespace) -> int:
    u = Client.from_args(args).call("POST", f"/v1/users/{args.name}/reset-totp")
    done(args, u, f"TOTP of {u['name']} reset; they enrol again at their next sign-in.")
    return 0


@run
def cmd_users_revoke_tokens(args: argparse.Namespace) -> int:
    r = Client.from_args(args).call("POST", f"/v1/users/{args.name}/revoke-tokens")
    done(
        args,
        r,
        f"Revoked {r['tokens']} token(s) and {len(r['cert_serials'])} SSH "
        f"certificate(s) of {r['user']}.",
    )
    return 0


@run
def cmd_users_set_password(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    pw = _secret_from(args, f"New password for {args.name}: ", confirm=True)
    u = client.call("POST", f"/v1/users/{args.name}/password", {"password": pw})
    done(args, u, f"Password of {u['name']} set.")
    return 0


@run
def cmd_users_add_key(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    k = client.call(
        "POST",
        f"/v1/users/{args.name}/keys",
        {"public_key": Path(args.key_file).read_text().strip()},
    )
    done(args, k, f"Registered {k['fingerprint']} for {args.name}.")
    return 0


@run
def cmd_contracts_list(args: argparse.Namespace) -> int:
    show(args, Client.from_args(args).call("GET", "/v1/contracts"), CONTRACT_COLUMNS, "Contracts")
    return 0


@run
def cmd_contracts_create(args: argparse.Namespace) -> int:
    c = Client.from_args(args).call(
        "POST",
        "/v1/contracts",
        {
            "vendor": args.vendor,
            "hospital": args.hospital,
            "instruments": args.instrument,
            "valid_until": _when(args.until),
            "reference": args.reference or "",
        },
    )
    done(args, c, f"Contract {c['id']} created.")
    return 0


@run
def cmd_contracts_end(args: argparse.Namespace) -> int:
    done(
        args, Client.from_args(args).call("POST", f"/v1/contracts/{args.id}/end"), "Contract ended."
    )
    return 0


def _show_policy(args: argparse.Namespace, p: dict[str, Any]) -> int:
    if wants_json(args):
        emit_json(p)
    else:
        show(
            args,
            [{"setting": k, "value": v} for k, v in p.items()],
            [("setting", "Setting"), ("value", "Value")],
            f"Policy of {args.hospital}",
        )
    return 0


@run
def cmd_policy_show(args: argparse.Namespace) -> int:
    return _show_policy(args, Client.from_args(args).call("GET", f"/v1/policies/{args.hospital}"))


@run
def cmd_policy_set(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
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
    for flag, key in (
        ("file_transfer", "file_transfer_allowed"),
        ("emergency", "emergency_allowed"),
        ("record_input", "record_input"),
        ("clipboard", "clipboard_allowed"),
        ("drive", "drive_allowed"),
    ):
        if _yes(getattr(args, flag)) is not None:
            changes[key] = _yes(getattr(args, flag))
    if args.emergency_max_duration:
        changes["emergency_max_duration_s"] = parse_duration(args.emergency_max_duration)
    if args.request_ttl:
        changes["request_ttl_s"] = parse_duration(args.request_ttl)
    return _show_policy(args, client.call("PATCH", f"/v1/policies/{args.hospital}", changes))


def _instrument_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {
        "host": args.host,
        "gateway": args.gateway,
        "ssh_port": args.ssh_port,
        "ports": args.port,
        "protocol": args.protocol,
        "keyboard_layout": args.keyboard_layout,
        "department": args.department,
        "model": args.model,
        "vendor": args.vendor,
        "criticality": args.criticality,
        "login_username": args.login_username,
    }
    return {k: v for k, v in fields.items() if v is not None}


@run
def cmd_instruments_list(args: argparse.Namespace) -> int:
    show(
        args,
        Client.from_args(args).call("GET", "/v1/instruments"),
        INSTRUMENT_COLUMNS,
        "Instruments",
    )
    return 0


@run
def cmd_instruments_show(args: argparse.Namespace) -> int:
    show(
        args, Client.from_args(args).call("GET", f"/v1/instruments/{args.name}"), INSTRUMENT_COLUMNS
    )
    return 0


@run
def cmd_instruments_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "hospital": args.hospital, **_instrument_fields(args)}
    i = Client.from_args(args).call("POST", "/v1/instruments", body)
    done(args, i, f"Instrument {i['name']} registered.")
    return 0


@run
def cmd_instruments_set(args: argparse.Namespace) -> int:
    i = Client.from_args(args).call(
        "PATCH", f"/v1/instruments/{args.name}", _instrument_fields(args)
    )
    done(args, i, f"Instrument {i['name']} updated.")
    return 0


@run
def cmd_instruments_credential(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    secret = _secret_from(args, f"Credential for {args.name}: ")
    i = client.call(
        "PUT",
        f"/v1/instruments/{args.name}/credential",
        {"kind": args.kind, "secret": secret, "username": args.login_username},
    )
    done(args, i, f"Credential for {i['name']} stored (write-only).")
    return 0


@run
def cmd_instruments_accept_key(args: argparse.Namespace) -> int:
    i = Client.from_args(args).call(
        "POST", f"/v1/instruments/{args.name}/accept-host-key", {"fingerprint": args.fingerprint}
    )
    done(args, i, f"Host key of {i['name']} accepted; sessions may resume.")
    return 0


@run
def cmd_gateway_list(args: argparse.Namespace) -> int:
    show(args, Client.from_args(args).call("GET", "/v1/gateways"), GATEWAY_COLUMNS, "Gateways")
    return 0


@run
def cmd_gateway_token(args: argparse.Namespace) -> int:
    t = Client.from_args(args).call(
        "POST", "/v1/gateways/tokens", {"hospital": args.hospital, "ttl_s": args.ttl_s}
    )
    if wants_json(args):
        emit_json(t)
    else:
        sys.stdout.write(t["token"] + "\n")
        print(
            f"one-time enrolment token for {t['hospital']}, valid until {t['expires_at']}",
            file=sys.stderr,
        )
    return 0


@run
def cmd_gateway_revoke(args: argparse.Namespace) -> int:
    done(args, Client.from_args(args).call("POST", f"/v1/gateways/{args.name}/revoke"), "Revoked.")
    return 0


# --- registration -----------------------------------------------------------------

_ROLES = ["engineer", "approver", "hospital_admin", "auditor", "platform_admin", "vendor_admin"]


def _register_keys(adm: Any) -> None:
    p = adm.add_parser(
        "keys",
        help="the broker's own keys: rotate, public signing keys "
        "(on the broker host; engineers' SSH keys are 'hoshu keys')",
    )
    act = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    # no --api: these run on the broker host, on its settings and key store
    a = act.add_parser("rotate", help="new version of the sealing and/or audit signing key")
    a.set_defaults(func=cmd_keys_rotate)
    a.add_argument("--what", choices=["sealing", "signing", "all"], default="all")
    a.add_argument("--data-dir", help="broker data directory (env HOSHU_DATA_DIR)")
    a = act.add_parser("public", help="the audit signing key's public halves (PEM), every version")
    a.set_defaults(func=cmd_keys_public)
    a.add_argument("--out", help="write audit-signing-<version>.pem files here")
    a.add_argument("--data-dir", help="broker data directory (env HOSHU_DATA_DIR)")


def _register_orgs(adm: Any) -> None:
    p = adm.add_parser("orgs", help="organisations")
    add_api_argument(p)
    act = add_actions(p, cmd_orgs_list)
    add_action(act, "list", cmd_orgs_list, "list organisations")
    a = add_action(act, "create", cmd_orgs_create, "create a hospital or vendor")
    a.add_argument("name")
    a.add_argument("--kind", choices=["hospital", "vendor"], required=True)
    a.add_argument("--source", action="append", help="allowed source network (vendors)")
    a = add_action(
        act, "set-sources", cmd_orgs_set_sources, "the networks a vendor's people may sign in from"
    )
    a.add_argument("name")
    a.add_argument("--source", action="append", help="allowed source network (none: any)")


def _register_users(adm: Any) -> None:
    p = adm.add_parser("users", help="user accounts")
    add_api_argument(p)
    p.add_argument("--org", help="list: only this organisation's accounts")
    act = add_actions(p, cmd_users_list)
    a = add_action(act, "list", cmd_users_list, "list accounts")
    a.add_argument("--org", default=argparse.SUPPRESS, help="only this organisation's accounts")
    a = add_action(
        act,
        "vendor-accounts",
        cmd_users_vendor_accounts,
        "vendor accounts that can reach a hospital",
    )
    a.add_argument("--hospital")
    a = add_action(act, "show", cmd_users_show, "one account")
    a.add_argument("name")
    a = add_action(act, "create", cmd_users_create, "create an account")
    a.add_argument("name")
    a.add_argument("--full-name", required=True)
    a.add_argument("--org", required=True)
    a.add_argument("--role", action="append", choices=_ROLES, required=True)
    a.add_argument("--expires", help="account expiry (ISO date)")
    a.add_argument("--email")
    a.add_argument("--password-stdin", action="store_true")
    a = add_action(act, "expire", cmd_users_expire, "set or clear an account's expiry")
    a.add_argument("name")
    a.add_argument("--at", help="new expiry (ISO date or 'never')")
    for name, func, help_text in (
        ("deactivate", cmd_users_deactivate, "deactivate: tokens and sessions end now"),
        ("reset-totp", cmd_users_reset_totp, "make the person enrol TOTP again"),
        (
            "revoke-tokens",
            cmd_users_revoke_tokens,
            "end the person's API tokens and SSH certificates",
        ),
    ):
        add_action(act, name, func, help_text).add_argument("name")
    a = add_action(act, "recertify", cmd_users_recertify, "record an access review")
    a.add_argument("name")
    a.add_argument("--comment")
    a = add_action(act, "set-password", cmd_users_set_password, "set a new password")
    a.add_argument("name")
    a.add_argument("--password-stdin", action="store_true")
    a = add_action(act, "add-key", cmd_users_add_key, "register an SSH public key")
    a.add_argument("name")
    a.add_argument("--key-file", required=True)


def _register_contracts(adm: Any) -> None:
    p = adm.add_parser("contracts", help="vendor ↔ hospital contracts")
    add_api_argument(p)
    act = add_actions(p, cmd_contracts_list)
    add_action(act, "list", cmd_contracts_list, "list contracts")
    a = add_action(act, "create", cmd_contracts_create, "create a contract")
    a.add_argument("--vendor", required=True)
    a.add_argument("--hospital", required=True)
    a.add_argument(
        "--instrument",
        action="append",
        required=True,
        help="instrument name, or '*' for all (repeatable)",
    )
    a.add_argument("--until")
    a.add_argument("--reference")
    a = add_action(act, "end", cmd_contracts_end, "end a contract now")
    a.add_argument("id")


def _register_policy(adm: Any) -> None:
    p = adm.add_parser("policy", aliases=["policies"], help="a hospital's access policy")
    add_api_argument(p)
    act = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_action(act, "show", cmd_policy_show, "show the policy").add_argument("hospital")
    a = add_action(act, "set", cmd_policy_set, "change settings of the policy")
    a.add_argument("hospital")
    a.add_argument("--max-duration")
    a.add_argument("--approvals", type=int, choices=[1, 2])
    a.add_argument("--critical-approvals", type=int, choices=[1, 2])
    a.add_argument("--hours", help="HH:MM-HH:MM (hospital time) or 'any'")
    a.add_argument("--timezone")
    a.add_argument("--file-transfer", choices=["yes", "no"])
    a.add_argument("--emergency", choices=["yes", "no"])
    a.add_argument(
        "--record-input",
        choices=["yes", "no"],
        help="record what engineers type in shells (default no)",
    )
    a.add_argument(
        "--clipboard",
        choices=["yes", "no"],
        help="relay the clipboard in desktop sessions, each transfer logged (default no)",
    )
    a.add_argument(
        "--drive",
        choices=["yes", "no"],
        help="give RDP desktops a drive of the broker's, each file logged (default no)",
    )
    a.add_argument("--emergency-max-duration")
    a.add_argument("--request-ttl")


def _instrument_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("--hospital", help="the instrument's hospital (create; set keeps it)")
    a.add_argument("--host")
    a.add_argument("--gateway")
    a.add_argument("--ssh-port", type=int)
    a.add_argument("--port", type=int, action="append")
    a.add_argument("--protocol")
    a.add_argument(
        "--keyboard-layout",
        metavar="LAYOUT",
        help="the keyboard an RDP desktop is typed on: en-US (a US PC keyboard, the "
        "default) or ja-JP (a Japanese JIS 106/109 one); the broker refuses others",
    )
    a.add_argument("--department")
    a.add_argument("--model")
    a.add_argument("--vendor")
    a.add_argument("--criticality", choices=["low", "normal", "high", "critical"])
    a.add_argument("--login-username")


def _register_instruments(adm: Any) -> None:
    p = adm.add_parser("instruments", help="instruments and their credentials")
    add_api_argument(p)
    act = add_actions(p, cmd_instruments_list)
    add_action(act, "list", cmd_instruments_list, "list instruments")
    add_action(act, "show", cmd_instruments_show, "one instrument").add_argument("name")
    a = add_action(act, "create", cmd_instruments_create, "register an instrument")
    a.add_argument("name")
    _instrument_options(a)
    a = add_action(act, "set", cmd_instruments_set, "change an instrument")
    a.add_argument("name")
    _instrument_options(a)
    a = add_action(
        act,
        "credential",
        cmd_instruments_credential,
        "store the instrument's login credential (write-only)",
    )
    a.add_argument("name")
    a.add_argument("--login-username")
    a.add_argument("--kind", choices=["password", "private_key"], default="password")
    a.add_argument("--secret-file", help="read the credential from a file")
    a.add_argument("--secret-stdin", action="store_true")
    a = add_action(
        act,
        "accept-key",
        cmd_instruments_accept_key,
        "accept a changed host key; sessions may resume",
    )
    a.add_argument("name")
    a.add_argument("--fingerprint", required=True, help="SHA256:...")


def _register_gateway(sub: Any) -> None:
    gw = sub.add_parser("gateway", help="hospital gateways: enrolment tokens, list, revoke")
    add_api_argument(gw)
    act = add_actions(gw, cmd_gateway_list)
    add_action(act, "list", cmd_gateway_list, "list gateways")
    a = add_action(act, "token", cmd_gateway_token, "a one-time enrolment token")
    a.add_argument("--hospital")
    a.add_argument("--ttl-s", type=int, default=3600)
    add_action(act, "revoke", cmd_gateway_revoke, "revoke a gateway").add_argument(
        "name", help="gateway"
    )


def register(sub: Any) -> None:
    admin = sub.add_parser("admin", help="administration (orgs, users, contracts, ...)")
    adm = admin.add_subparsers(dest="admin_command", metavar="AREA", required=True)

    p = adm.add_parser("bootstrap", help="create the first platform admin (on the database)")
    p.add_argument("--name", required=True)
    p.add_argument("--full-name", required=True)
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--data-dir", help="broker data directory (env HOSHU_DATA_DIR)")
    p.set_defaults(func=cmd_bootstrap)

    _register_keys(adm)
    _register_orgs(adm)
    _register_users(adm)
    _register_contracts(adm)
    _register_policy(adm)
    _register_instruments(adm)
    _register_gateway(sub)
