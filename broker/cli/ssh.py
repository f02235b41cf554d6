"""``hoshu ssh-config`` and ``hoshu sessions [list|watch|terminate]``.

``ssh-config`` works offline from its arguments (or the API for the broker's
host key and your granted instruments).  ``sessions`` talks to the control
plane API: ``GET /v1/sessions``, ``GET /v1/sessions/{id}/stream`` (the live,
read-only terminal stream) and ``POST /v1/sessions/{id}/terminate``; the API
serves them from the front door's :class:`broker.live.sessions.SessionRegistry`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from broker.cli.client import ApiError, Client, config_dir, load_token
from broker.frontdoor.errors import SshConfigError
from broker.frontdoor.sshconfig import SshConfigRequest, known_hosts_line, render


def register(sub: Any) -> None:
    p = sub.add_parser("ssh-config", help="print the ssh_config block for your instruments")
    p.add_argument("--user", required=True, help="your hoshu user name")
    p.add_argument(
        "--instrument",
        action="append",
        default=[],
        help="instrument name (repeat); default: ask the API for your grants",
    )
    p.add_argument("--broker-host", default=os.environ.get("HOSHU_SSH_HOST", "127.0.0.1"))
    p.add_argument("--broker-port", type=int, default=int(os.environ.get("HOSHU_SSH_PORT", "2222")))
    p.add_argument("--identity-file", default="~/.ssh/id_ed25519")
    p.add_argument("--certificate-file", default=None)
    p.add_argument("--known-hosts-file", default="~/.config/hoshu/known_hosts")
    p.add_argument(
        "--host-key-file",
        type=Path,
        default=None,
        help="the broker's SSH host public key (pinned into --known-hosts-file)",
    )
    p.add_argument(
        "--write-known-hosts",
        action="store_true",
        help="also write the pinned broker key to --known-hosts-file",
    )
    p.add_argument("--api", default=os.environ.get("HOSHU_API", "http://127.0.0.1:8440"))
    p.set_defaults(func=_ssh_config)

    c = sub.add_parser("ssh-cert", help="get a short-lived SSH certificate (after hoshu login)")
    c.add_argument(
        "--key", type=Path, default=Path("~/.ssh/id_ed25519.pub"), help="your registered public key"
    )
    c.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write it (default: ~/.config/hoshu/<key>-cert.pub)",
    )
    c.add_argument("--api", default=os.environ.get("HOSHU_API", "http://127.0.0.1:8440"))
    c.set_defaults(func=_ssh_cert)

    s = sub.add_parser("sessions", help="live sessions: list, watch, terminate")
    s.add_argument("--api", default=os.environ.get("HOSHU_API", "http://127.0.0.1:8440"))
    ssub = s.add_subparsers(dest="sessions_command")
    s.set_defaults(func=_sessions_list)
    ls = ssub.add_parser("list", help="list live sessions you may see")
    ls.set_defaults(func=_sessions_list)
    w = ssub.add_parser("watch", help="follow a live session read-only")
    w.add_argument("session_id")
    w.set_defaults(func=_sessions_watch)
    t = ssub.add_parser("terminate", help="end a live session now")
    t.add_argument("session_id")
    t.add_argument("--reason", default="terminated by approver")
    t.set_defaults(func=_sessions_terminate)


def _ssh_config(args: argparse.Namespace) -> int:
    instruments = list(args.instrument)
    if not instruments:
        try:
            data = _api(args, "GET", "/v1/me/instruments")
            instruments = [str(i["name"]) for i in data.get("instruments", [])]
        except ApiError as exc:
            print(f"hoshu: {exc}; name instruments with --instrument", file=sys.stderr)
            return 1
    req = SshConfigRequest(
        user=args.user,
        broker_host=args.broker_host,
        broker_port=args.broker_port,
        instruments=tuple(instruments),
        identity_file=args.identity_file,
        certificate_file=args.certificate_file,
        known_hosts_file=args.known_hosts_file,
    )
    try:
        text = render(req)
        pinned = known_hosts_line(args.host_key_file.read_text()) if args.host_key_file else None
    except (SshConfigError, OSError) as exc:
        print(f"hoshu: {exc}", file=sys.stderr)
        return 2
    if pinned and args.write_known_hosts:
        path = Path(os.path.expanduser(args.known_hosts_file))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pinned + "\n")
    sys.stdout.write(text)
    if pinned and not args.write_known_hosts:
        sys.stdout.write(
            f"# pin the broker key: put this line in {args.known_hosts_file}\n# {pinned}\n"
        )
    return 0


def _client(args: argparse.Namespace) -> Client:
    """The CLI's one API client, with the bearer token of ``hoshu login`` (or
    ``$HOSHU_TOKEN``) if there is one."""
    return Client(args.api, load_token(), timeout=15)


def _api(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """One API call; :class:`ApiError` ("<status>: <message>") on refusal."""
    with _client(args) as client:
        try:
            r = client.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ApiError(f"the hoshu API at {args.api} cannot be reached ({exc})") from exc
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:200]
        raise ApiError(f"{r.status_code}: {msg}", r.status_code)
    return r.json() if r.content else {}


def _ssh_cert(args: argparse.Namespace) -> int:
    key_path = args.key.expanduser()
    try:
        public_key = key_path.read_text().strip()
    except OSError as exc:
        print(f"hoshu: cannot read {key_path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        data = _api(args, "POST", "/v1/ssh/certificate", {"public_key": public_key})
    except ApiError as exc:
        print(f"hoshu: {exc}", file=sys.stderr)
        return 1
    stem = key_path.name.removesuffix(".pub")
    out = args.out.expanduser() if args.out else config_dir() / f"{stem}-cert.pub"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(str(data["certificate"]) + "\n")
    print(f"certificate written to {out}; use it with: ssh -o CertificateFile={out} ...")
    return 0


def _sessions_list(args: argparse.Namespace) -> int:
    try:
        data = _api(args, "GET", "/v1/sessions")
    except ApiError as exc:
        print(f"hoshu: {exc}", file=sys.stderr)
        return 1
    rows = data.get("sessions", [])
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    for s in rows:
        print(
            f"{s['session_id']}  {s['kind']:<7} {s['user']:<16} {s['instrument']:<20} "
            f"since {s['started']}  grant ends {s.get('grant_ends') or '-'}"
        )
    if not rows:
        print("no live sessions")
    return 0


def _sessions_watch(args: argparse.Namespace) -> int:
    path = f"/v1/sessions/{args.session_id}/stream"
    try:
        with (
            _client(args) as client,
            client.http.stream("GET", path, timeout=httpx.Timeout(15, read=None)) as r,
        ):
            if r.status_code >= 400:
                print(f"hoshu: {r.status_code}: cannot follow {args.session_id}", file=sys.stderr)
                return 1
            for chunk in r.iter_bytes():
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
    except httpx.HTTPError as exc:
        print(f"hoshu: the hoshu API at {args.api} cannot be reached ({exc})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    print("\nhoshu: session ended", file=sys.stderr)
    return 0


def _sessions_terminate(args: argparse.Namespace) -> int:
    try:
        _api(args, "POST", f"/v1/sessions/{args.session_id}/terminate", {"reason": args.reason})
    except ApiError as exc:
        print(f"hoshu: {exc}", file=sys.stderr)
        return 1
    print(f"session {args.session_id} terminated")
    return 0
