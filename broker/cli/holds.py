"""``hoshu holds``: shell command lines waiting for a hospital approver.

``hoshu holds`` lists them (the hospital's staff see their hospital's, an engineer
his own); ``hoshu holds allow ID`` and ``hoshu holds refuse ID`` answer one, as an
approver of the session's hospital.  A line not answered before its deadline is
refused (docs/auditor.md).  With several broker replicas any of them lists the
cluster's waiting lines and takes the answer; the first answer wins.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli.client import Client, add_api_argument, run
from broker.cli.output import done, show

HOLD_COLUMNS = [
    ("id", "Hold"),
    ("engineer", "Engineer"),
    ("instrument", "Instrument"),
    ("command", "Command"),
    ("reason", "Rule"),
    ("deadline", "Until"),
]


@run
def cmd_holds(args: argparse.Namespace) -> int:
    data = Client.from_args(args).call("GET", "/v1/holds")
    show(args, data["holds"], HOLD_COLUMNS, title="Commands waiting for an approver")
    return 0


def _answer(verb: str) -> Any:
    @run
    def cmd(args: argparse.Namespace) -> int:
        h = Client.from_args(args).call("POST", f"/v1/holds/{args.id}/{verb}")
        what = "allowed: it is sent to" if verb == "allow" else "refused: it is not sent to"
        done(args, h, f"{h['command']!r} {what} {h['instrument']}.")
        return 0

    return cmd


def register(sub: Any) -> None:
    p = sub.add_parser("holds", help="shell commands waiting for an approver; allow or refuse")
    add_api_argument(p)
    p.set_defaults(func=cmd_holds)
    actions = p.add_subparsers(dest="holds_command", metavar="ACTION")
    for verb, text in (("allow", "send the held command"), ("refuse", "refuse it")):
        a = actions.add_parser(verb, help=text)
        add_api_argument(a)
        a.add_argument("id", help="the hold's id (hoshu holds)")
        a.set_defaults(func=_answer(verb))
