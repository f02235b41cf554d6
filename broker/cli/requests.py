"""Daily work: ``hoshu request``, ``requests``, ``approve``, ``deny``, ``cancel``,
``grants``, ``revoke``, ``end`` and ``emergency``."""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.cli.client import Client, CliError, add_api_argument, run
from broker.cli.output import console, done, short_time, show, wants_json

REQUEST_COLUMNS = [
    ("id", "Id"),
    ("status", "Status"),
    ("requester", "Engineer"),
    ("instruments", "Instruments"),
    ("ports", "Ports"),
    ("duration_s", "Seconds"),
    ("start_at", "Start"),
    ("emergency", "Emergency"),
    ("ticket", "Ticket"),
    ("created_at", "Asked"),
]
GRANT_COLUMNS = [
    ("id", "Id"),
    ("status", "Status"),
    ("user", "Engineer"),
    ("instruments", "Instruments"),
    ("ports", "Ports"),
    ("starts_at", "From"),
    ("ends_at", "Until"),
    ("emergency", "Emergency"),
    ("review_verdict", "Review"),
]
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(text: str) -> int:
    """``90m``, ``1h30m``, ``2h``, ``600`` → seconds."""
    m = _DURATION.match(text.strip())
    if not text.strip() or not m:
        raise CliError(f"duration {text!r}: use forms like 45m, 2h, 1h30m or seconds")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def parse_start(text: str | None) -> str | None:
    if not text or text == "now":
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"start {text!r}: use ISO 8601, e.g. 2026-03-02T10:00+09:00") from exc
    if t.tzinfo is None:
        t = t.astimezone()  # the engineer's local zone
    return t.isoformat()


def _request_body(args: argparse.Namespace) -> dict[str, Any]:
    plan = args.plan
    if args.plan_file:
        plan = Path(args.plan_file).read_text(encoding="utf-8")
    return {
        "instruments": args.instruments,
        "ports": args.port or [],
        "file_transfer": args.file_transfer,
        "reason": args.reason,
        "ticket": args.ticket or "",
        "work_plan": plan or "",
        "start_at": parse_start(getattr(args, "start", None)),
        "duration_s": parse_duration(args.duration),
    }


@run
def cmd_request(args: argparse.Namespace) -> int:
    data = Client.from_args(args).call("POST", "/v1/requests", _request_body(args))
    done(
        args,
        data,
        f"Request [bold]{data['id']}[/bold] is {data['status']}; "
        f"{data['approvals_required']} approval(s) needed.",
    )
    return 0


def _print_detail(args: argparse.Namespace, d: dict[str, Any]) -> None:
    if wants_json(args):
        from broker.cli.output import emit_json

        emit_json(d)
        return
    r = d["request"]
    c = console()
    c.print(
        f"[bold]Request {r['id']}[/bold] — {r['status']}"
        + (" [red](emergency)[/red]" if r["emergency"] else "")
    )
    c.print(
        f"instruments: {', '.join(r['instruments'])}  ports: "
        f"{', '.join(map(str, r['ports']))}  file transfer: "
        f"{'yes' if r['file_transfer'] else 'no'}"
    )
    c.print(f"reason: {r['reason']}  ticket: {r['ticket'] or '—'}")
    if r["work_plan"]:
        c.print(f"work plan:\n{r['work_plan']}")
    for dec in d["decisions"]:
        c.print(f"  {short_time(dec['at'])} {dec['verdict']} by {dec['approver']} {dec['comment']}")
    show(
        args,
        d["history"],
        [
            ("at", "When"),
            ("subject_kind", "What"),
            ("from_state", "From"),
            ("to_state", "To"),
            ("actor", "By"),
            ("comment", "Comment"),
        ],
        "History",
    )
    if d["grant"]:
        show(args, d["grant"], GRANT_COLUMNS, "Grant")


@run
def cmd_requests(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    if args.id:
        _print_detail(args, client.call("GET", f"/v1/requests/{args.id}"))
        return 0
    params = {"status": args.status} if args.status else None
    show(args, client.call("GET", "/v1/requests", params=params), REQUEST_COLUMNS, "Requests")
    return 0


def _decide(verb: str) -> Any:
    @run
    def cmd(args: argparse.Namespace) -> int:
        body = {"comment": args.comment or ""} if verb != "cancel" else None
        d = Client.from_args(args).call("POST", f"/v1/requests/{args.id}/{verb}", body)
        r = d["request"]
        extra = ""
        if d["grant"]:
            g = d["grant"]
            extra = f"; grant {g['id']} {short_time(g['starts_at'])} → {short_time(g['ends_at'])}"
        elif verb == "approve" and r["status"] == "pending":
            extra = "; another approver must also approve"
        done(args, d, f"Request {r['id']} is {r['status']}{extra}.")
        return 0

    cmd.__name__ = f"cmd_{verb}"
    return cmd


@run
def cmd_grants(args: argparse.Namespace) -> int:
    params = {"live": args.live, "unreviewed": args.unreviewed}
    show(
        args,
        Client.from_args(args).call("GET", "/v1/grants", params=params),
        GRANT_COLUMNS,
        "Grants",
    )
    return 0


@run
def cmd_revoke(args: argparse.Namespace) -> int:
    g = Client.from_args(args).call(
        "POST", f"/v1/grants/{args.id}/revoke", {"comment": args.comment or ""}
    )
    done(args, g, f"Grant {g['id']} revoked; its sessions are ended.")
    return 0


@run
def cmd_end(args: argparse.Namespace) -> int:
    g = Client.from_args(args).call("POST", f"/v1/grants/{args.id}/end")
    done(args, g, f"Grant {g['id']} ended.")
    return 0


@run
def cmd_emergency_start(args: argparse.Namespace) -> int:
    body = _request_body(args)
    body.pop("start_at")
    g = Client.from_args(args).call("POST", "/v1/emergency", body)
    done(
        args,
        g,
        f"[red]Emergency access[/red] {g['id']} open until "
        f"{short_time(g['ends_at'])}. The hospital has been alerted and will "
        f"review it.",
    )
    return 0


@run
def cmd_emergency_review(args: argparse.Namespace) -> int:
    g = Client.from_args(args).call(
        "POST",
        f"/v1/grants/{args.id}/review",
        {"verdict": args.verdict, "comment": args.comment or ""},
    )
    done(args, g, f"Emergency {g['id']} reviewed: {g['review_verdict']}.")
    return 0


def _request_args(p: argparse.ArgumentParser, *, scheduled: bool = True) -> None:
    p.add_argument("instruments", nargs="+", help="instrument names (one hospital)")
    p.add_argument("--duration", required=True, help="e.g. 45m, 2h, 1h30m")
    p.add_argument("--reason", required=True)
    p.add_argument("--port", type=int, action="append", help="port (repeat); default SSH")
    p.add_argument("--file-transfer", action="store_true", help="ask for file transfer")
    p.add_argument("--ticket", help="ticket or work-plan reference")
    p.add_argument("--plan", help="work plan text (作業計画)")
    p.add_argument("--plan-file", help="read the work plan from a file")
    if scheduled:
        p.add_argument("--start", help="scheduled start (ISO 8601; default: on approval)")


def register(sub: Any) -> None:
    p = sub.add_parser("request", help="ask for access to instruments")
    add_api_argument(p)
    _request_args(p)
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("requests", help="list requests, or show one with its history")
    add_api_argument(p)
    p.add_argument("id", nargs="?", help="show this request in full")
    p.add_argument("--status", choices=["pending", "approved", "denied", "expired", "cancelled"])
    p.set_defaults(func=cmd_requests)

    for verb, text in (
        ("approve", "approve a request"),
        ("deny", "deny a request"),
        ("cancel", "withdraw your pending request"),
    ):
        p = sub.add_parser(verb, help=text)
        add_api_argument(p)
        p.add_argument("id")
        if verb != "cancel":
            p.add_argument("--comment", required=verb == "deny")
        p.set_defaults(func=_decide(verb))

    p = sub.add_parser("grants", help="list grants")
    add_api_argument(p)
    p.add_argument("--live", action="store_true", help="only grants not yet over")
    p.add_argument("--unreviewed", action="store_true", help="emergencies awaiting review")
    p.set_defaults(func=cmd_grants)

    p = sub.add_parser("revoke", help="revoke a grant now (ends its sessions)")
    add_api_argument(p)
    p.add_argument("id")
    p.add_argument("--comment")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("end", help="end your grant when the work is done")
    add_api_argument(p)
    p.add_argument("id")
    p.set_defaults(func=cmd_end)

    em = sub.add_parser("emergency", help="emergency access (alerted, reviewed after)")
    ems = em.add_subparsers(dest="emergency_command", metavar="ACTION", required=True)
    p = ems.add_parser("start", help="start emergency access now")
    add_api_argument(p)
    _request_args(p, scheduled=False)
    p.set_defaults(func=cmd_emergency_start)
    p = ems.add_parser("review", help="review an emergency access (approvers)")
    add_api_argument(p)
    p.add_argument("id")
    p.add_argument("--verdict", required=True, choices=["accepted", "rejected"])
    p.add_argument("--comment")
    p.set_defaults(func=cmd_emergency_review)
