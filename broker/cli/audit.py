"""``hoshu audit ...`` and ``hoshu report sign``.

Local (on the broker host, reading files):
  hoshu audit verify [--log PATH] [--store URL]
                     (--trusted-key PUB.pem ... | --key-store | --no-signatures)
                     [--checkpoint JSON|FILE] [--checkpoint-from SIEM.jsonl ...]
                     [--checkpoint-every N] [--allow-open-tail] [--index [URL]]
  hoshu audit outbox [--reset SINK=SEQ]

Through the API (``--api`` / ``HOSHU_API``, bearer token from
``$HOSHU_CONFIG_DIR/token.json`` or ``~/.config/hoshu/token.json``, or ``HOSHU_TOKEN``):
  hoshu audit search  [filters] [--limit N] [--page TOKEN] [--desc]
  hoshu audit export  --format csv|jsonl [-o FILE] [filters]
  hoshu audit play    SESSION [--speed X] [--max-idle S]
  hoshu audit report  GRANT [--format json|html] [--lang ja|en] [--generate] [-o FILE]
  hoshu audit review  MONTH [--hospital ID] [--format json|html] [--lang ja|en]
  hoshu audit sinks
  hoshu audit compliance [--format text|md|json] [--lang ja|en]   (no API needed)
  hoshu report sign   GRANT [--comment TEXT]

Exit codes: 0 ok, 1 verification failed or the API refused, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from audit.errors import AuditError
from audit.recording import play
from broker.cli.audit_local import add_compliance_parser, add_verify_parser
from broker.cli.client import Client, api_url, load_token

_FILTERS = (
    "start",
    "end",
    "hospital",
    "instrument",
    "engineer",
    "vendor",
    "outcome",
    "session",
    "grant",
    "command",
)
Params = list[tuple[str, str | int | float | bool | None]]


def _settings() -> Any:
    from broker.settings import BrokerSettings

    return BrokerSettings()


def make_client(args: argparse.Namespace) -> httpx.Client:
    """The API client (tests replace this with a client bound to an in-process app):
    the CLI's one :class:`~broker.cli.client.Client`, its answers read raw here."""
    return Client(api_url(args), load_token()).http


client_factory: Callable[[argparse.Namespace], httpx.Client] = make_client


def _fail(resp: httpx.Response) -> int:
    try:
        err = resp.json()["error"]
        print(f"error: {err['message']} ({err['code']}, HTTP {resp.status_code})", file=sys.stderr)
    except (ValueError, KeyError, TypeError):
        print(f"error: HTTP {resp.status_code}", file=sys.stderr)
    return 1


def _params(args: argparse.Namespace) -> Params:
    out: Params = [(k, str(getattr(args, k))) for k in _FILTERS if getattr(args, k, None)]
    if getattr(args, "request", None):
        out.append(("request_id", args.request))
    out += [("type", t) for t in getattr(args, "type", None) or []]
    return out


def _reaching_api(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a network failure into one clear line and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except httpx.HTTPError as exc:
            print(f"error: cannot reach the hoshu API at {api_url(args)}: {exc}", file=sys.stderr)
            return 1

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


# --- API commands ---------------------------------------------------------------------


@_reaching_api
def cmd_search(args: argparse.Namespace) -> int:
    params: Params = [*_params(args), ("limit", str(args.limit))]
    if args.page:
        params.append(("page", args.page))
    if args.desc:
        params.append(("order", "desc"))
    with client_factory(args) as client:
        resp = client.get("/v1/audit/events", params=params)
    if resp.status_code != 200:
        return _fail(resp)
    data = resp.json()
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
        return 0
    for e in data["events"]:
        print(
            f"{e.get('TimeGenerated', '')[:19]}  {e.get('EventType', ''):<24} "
            f"{e.get('EventResult', ''):<8} {e.get('ActorUsername') or '-':<14} "
            f"{e.get('TargetHostname') or '-':<16} {e.get('EventMessage') or ''}"
        )
    if data.get("next_page"):
        print(f"-- more: --page {data['next_page']}")
    return 0


@_reaching_api
def cmd_export(args: argparse.Namespace) -> int:
    params = [*_params(args), ("format", args.format)]
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        with (
            client_factory(args) as client,
            client.stream("GET", "/v1/audit/export", params=params) as resp,
        ):
            if resp.status_code != 200:
                resp.read()
                return _fail(resp)
            for chunk in resp.iter_text():
                out.write(chunk)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


@_reaching_api
def cmd_play(args: argparse.Namespace) -> int:
    with client_factory(args) as client:
        resp = client.get(f"/v1/recordings/{args.session}")
    if resp.status_code != 200:
        return _fail(resp)
    import hashlib

    expected = resp.headers.get("X-Recording-SHA256", "")
    if expected and hashlib.sha256(resp.content).hexdigest() != expected:
        print("error: the recording does not match its SHA-256", file=sys.stderr)
        return 1
    with tempfile.NamedTemporaryFile(suffix=".cast") as f:
        f.write(resp.content)
        f.flush()

        def write(s: str) -> None:
            sys.stdout.write(s)
            sys.stdout.flush()

        try:
            play(f.name, write, speed=args.speed, max_idle_s=args.max_idle)
        except AuditError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"\n[recording of {args.session}, SHA-256 {expected}]", file=sys.stderr)
    return 0


def _write_out(args: argparse.Namespace, text: str) -> None:
    if getattr(args, "output", None):
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text)


@_reaching_api
def cmd_report(args: argparse.Namespace) -> int:
    with client_factory(args) as client:
        if args.generate:
            resp = client.post(f"/v1/reports/{args.grant}/generate")
            if resp.status_code != 201:
                return _fail(resp)
        resp = client.get(
            f"/v1/reports/{args.grant}", params={"format": args.format, "lang": args.lang}
        )
    if resp.status_code != 200:
        return _fail(resp)
    _write_out(args, resp.text)
    return 0


@_reaching_api
def cmd_review(args: argparse.Namespace) -> int:
    params = {"format": args.format, "lang": args.lang}
    if args.hospital:
        params["hospital"] = args.hospital
    with client_factory(args) as client:
        resp = client.get(f"/v1/reviews/{args.month}", params=params)
    if resp.status_code != 200:
        return _fail(resp)
    _write_out(args, resp.text)
    return 0


@_reaching_api
def cmd_sinks(args: argparse.Namespace) -> int:
    with client_factory(args) as client:
        resp = client.get("/v1/audit/sinks")
    if resp.status_code != 200:
        return _fail(resp)
    sinks = resp.json()["sinks"]
    if args.json:
        print(json.dumps(sinks))
    for s in sinks if not args.json else []:
        print(
            f"{s['sink']:<12} {s['state']:<12} lag {s['lag_events']} events / "
            f"{s['lag_s']} s  {s.get('last_error') or ''}"
        )
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    """Local: each sink's acknowledged position and backlog, from the cursor files."""
    from audit.outbox import CursorStore, OutboxError, reset_cursor
    from audit.shipper import head_seq

    settings = _settings()
    log = settings.audit_log_path
    store = CursorStore(settings.audit_cursor_dir)
    if args.reset:
        sink, _, seq = args.reset.partition("=")
        try:
            c = reset_cursor(store, log, sink, int(seq or "0"))
        except (OutboxError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{sink}: cursor set to position {c.seq}; events after it will be sent again")
        return 0
    head = head_seq(log)
    rows = []
    for path in sorted(store.dir.glob("*.cursor")):
        name = path.name.removesuffix(".cursor")
        try:
            acked, problem = store.load(name).seq, ""
        except OutboxError as exc:
            acked, problem = 0, str(exc)
        rows.append(
            {
                "sink": name,
                "acked_seq": acked,
                "head_seq": head,
                "lag_events": max(0, head - acked),
                "problem": problem,
            }
        )
    if args.json:
        print(json.dumps(rows))
    for r in rows if not args.json else []:
        print(
            f"{r['sink']:<12} acked {r['acked_seq']:>10}  behind {r['lag_events']:>8}  "
            f"{r['problem']}"
        )
    return 1 if any(r["problem"] for r in rows) else 0


@_reaching_api
def cmd_sign(args: argparse.Namespace) -> int:
    with client_factory(args) as client:
        resp = client.get(f"/v1/reports/{args.grant}")
        if resp.status_code != 200:
            return _fail(resp)
        report = resp.json()
        verdict = report["verdict"]
        reasons = ", ".join(r["code"] for r in report["reasons"]) or "-"
        resp = client.post(
            f"/v1/reports/{args.grant}/sign",
            json={"report_sha256": report["report_sha256"], "comment": args.comment},
        )
    if resp.status_code != 201:
        return _fail(resp)
    print(
        f"signed: report for grant {args.grant} ({verdict}; reasons: {reasons}), "
        f"SHA-256 {report['report_sha256']}"
    )
    return 0


# --- registration -----------------------------------------------------------------


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", help="from (ISO 8601 with zone, e.g. 2026-04-01T00:00:00Z)")
    p.add_argument("--end", help="until (exclusive)")
    for name in ("hospital", "instrument", "engineer", "vendor", "session", "request", "grant"):
        p.add_argument(f"--{name}")
    p.add_argument("--command", help="commands (exec or typed in a shell) containing this text")
    p.add_argument("--type", action="append", help="event type (repeatable)")
    p.add_argument("--outcome", choices=("Success", "Failure", "Partial", "NA"))


def _api(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", help="API URL (default $HOSHU_API or http://127.0.0.1:8440)")


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="audit trail: verify, search, export, play")
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    add_verify_parser(sub)

    p = sub.add_parser("search", help="find events")
    _filters(p)
    _api(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--page")
    p.add_argument("--desc", action="store_true", help="newest first")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="export events as CSV or JSON Lines")
    _filters(p)
    _api(p)
    p.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("play", help="replay a session recording in this terminal")
    _api(p)
    p.add_argument("session")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--max-idle", type=float, default=2.0)
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("report", help="show a work report")
    _api(p)
    p.add_argument("grant")
    p.add_argument("--format", choices=("json", "html"), default="json")
    p.add_argument("--lang", choices=("ja", "en"), default="ja")
    p.add_argument("--generate", action="store_true", help="record report.generated first")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("review", help="the monthly log review")
    _api(p)
    p.add_argument("month", help="YYYY-MM")
    p.add_argument("--hospital")
    p.add_argument("--format", choices=("json", "html"), default="json")
    p.add_argument("--lang", choices=("ja", "en"), default="ja")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("outbox", help="on the broker host: per-sink cursors and backlog")
    p.add_argument(
        "--reset",
        metavar="SINK=SEQ",
        help="point a sink's cursor at a position (0: send everything again)",
    )
    p.set_defaults(func=cmd_outbox)

    add_compliance_parser(sub)

    p = sub.add_parser("sinks", help="shipping status and lag per sink")
    _api(p)
    p.set_defaults(func=cmd_sinks)

    report = subparsers.add_parser("report", help="work reports: sign off")
    rsub = report.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    p = rsub.add_parser("sign", help="sign off the work report of a grant")
    _api(p)
    p.add_argument("grant")
    p.add_argument("--comment")
    p.set_defaults(func=cmd_sign)
