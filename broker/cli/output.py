"""Output for people (rich tables) and for scripts (``--json``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def console() -> Console:
    # Off a terminal (pipes, logs) rich would squeeze tables into 80 columns.
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 220)


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def short_time(value: Any) -> str:
    if not value:
        return "—"
    text = str(value).replace("T", " ")
    return text[:16] + "Z" if len(text) >= 16 else text


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


def show(
    args: argparse.Namespace, data: Any, columns: Sequence[tuple[str, str]], title: str = ""
) -> None:
    """Print ``data`` (a dict or a list of dicts) as JSON or as a table of ``columns``."""
    if wants_json(args):
        emit_json(data)
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(title=title or None, header_style="bold")
    for _key, label in columns:
        table.add_column(label)
    for row in rows:
        values = []
        for key, _label in columns:
            v = row.get(key)
            if key.endswith("_at") or key in ("starts", "ends"):
                v = short_time(v)
            values.append(_cell(v))
        table.add_row(*values)
    if not rows:
        console().print(f"[dim]no {title.lower() or 'entries'}[/dim]")
        return
    console().print(table)


def done(args: argparse.Namespace, data: Any, message: str) -> None:
    if wants_json(args):
        emit_json(data)
    else:
        console().print(message)
