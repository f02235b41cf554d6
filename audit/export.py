"""Exports of audit events for auditors: CSV (one column per event column) and JSON Lines.

CSV cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return) are prefixed with ``'``: an engineer's
command line must not execute in the auditor's spreadsheet.  ``Details`` is
written as JSON.  JSON Lines carries each record exactly as indexed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from audit.events import COLUMNS

FORMATS = ("csv", "jsonl")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping | list):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA) else text


class _Line:
    def __init__(self) -> None:
        self.buf = ""

    def write(self, s: str) -> int:
        self.buf += s
        return len(s)


def csv_lines(events: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    names = [c.name for c in COLUMNS]
    line = _Line()
    writer = csv.writer(line, lineterminator="\r\n")
    writer.writerow(names)
    yield line.buf
    for e in events:
        line.buf = ""
        writer.writerow([_cell(e.get(n)) for n in names])
        yield line.buf


def jsonl_lines(events: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    for e in events:
        yield json.dumps(e, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"


def export_lines(events: Iterable[Mapping[str, Any]], fmt: str) -> Iterator[str]:
    if fmt == "csv":
        return csv_lines(events)
    if fmt == "jsonl":
        return jsonl_lines(events)
    raise ValueError(f"unknown export format {fmt!r} (csv or jsonl)")


def write_export(events: Iterable[Mapping[str, Any]], fmt: str, out: TextIO) -> int:
    """Write all events; returns how many were written (header not counted)."""
    n = -1 if fmt == "csv" else 0
    for chunk in export_lines(events, fmt):
        out.write(chunk)
        n += 1
    return n
