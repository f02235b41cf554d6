"""Render ``docs/audit-events.md`` from the catalog.

``python -m audit.docgen > docs/audit-events.md`` regenerates the page; a test
fails when the page and :data:`audit.catalog.CATALOG` disagree, so a new event
type cannot ship undocumented.
"""

from __future__ import annotations

from collections import defaultdict

from audit.catalog import CATALOG, Classification, EventType
from audit.events import COLUMNS

_GROUPS = {
    "user": "People signing in (API and CLI)",
    "ssh": "The SSH front door",
    "token": "API tokens",
    "request": "Access requests",
    "grant": "Grants",
    "emergency": "Emergency access",
    "alert": "Alerts",
    "session": "Sessions",
    "forward": "Port forwards",
    "file": "File transfers",
    "gateway": "Gateways",
    "instrument": "Instruments",
    "admin": "Administration",
    "report": "Work reports",
    "review": "Periodic review",
    "recording": "Recordings",
    "audit": "The audit system itself",
}

_HEADER = """# Audit events

Every event hoshu writes has one type from the catalog (`audit/catalog.py`) and
is a flat record of the columns below. This page is generated from the catalog
(`python -m audit.docgen > docs/audit-events.md`); a test fails when the two
disagree, and another fails when code emits a type that is not in the catalog.

Column names follow Microsoft Sentinel's normalization (ASIM) where the field
exists there (marked *ASIM*), so Sentinel queries the `HoshuAudit_CL` table
without parsers. The table and the Data Collection Rule stream are declared in
`infra/bicep/audit-table.json`, generated from the same columns.

## Field classification

- **public**: safe anywhere, shipped unchanged.
- **sensitive**: personal or operational data (user names, source addresses,
  command lines, file names, free text). Shipped, but before an event leaves
  the broker for a cloud sink the configured patient-identifier patterns are
  masked in these fields (see `docs/auditor.md`, "Patient data stays home").
- **secret**: never written. The value is replaced by `[redacted]` when the
  event is built, so it reaches neither the log nor any sink.

Recording content is never part of an event; events carry only the recording's
name, size and SHA-256.

"""


def _cls(c: Classification) -> str:
    return c.value


def _columns_table() -> list[str]:
    lines = [
        "## Columns",
        "",
        "| column | type | class | ASIM | meaning |",
        "|---|---|---|---|---|",
    ]
    for c in COLUMNS:
        asim = "ASIM" if c.asim else ""
        lines.append(
            f"| `{c.name}` | {c.type} | {_cls(c.classification)} | {asim} | {c.description} |"
        )
    return [*lines, ""]


def _type_row(t: EventType) -> str:
    details = ", ".join(f"`{k}` ({_cls(v)})" for k, v in sorted(t.details.items())) or "-"
    delivery = "enforced" if t.enforced else "best effort"
    return (
        f"| `{t.name}` | {t.schema.value} | {t.severity.value} | {delivery} "
        f"| {t.description} | {details} |"
    )


def render() -> str:
    groups: dict[str, list[EventType]] = defaultdict(list)
    for t in CATALOG.values():
        groups[t.name.split(".", 1)[0]].append(t)
    lines = [_HEADER.rstrip("\n"), "", *_columns_table(), "## Event types", ""]
    order = [g for g in _GROUPS if g in groups] + sorted(set(groups) - set(_GROUPS))
    for group in order:
        lines += [
            f"### {_GROUPS.get(group, group)}",
            "",
            "| type | ASIM schema | severity | delivery | meaning | details |",
            "|---|---|---|---|---|---|",
        ]
        lines += [_type_row(t) for t in sorted(groups[group], key=lambda t: t.name)]
        lines.append("")
    return "\n".join(lines)


def documented_types(markdown: str) -> set[str]:
    """The event types a rendered page lists (first cell of each type row)."""
    found: set[str] = set()
    for line in markdown.splitlines():
        if line.startswith("| `") and "." in line.split("|")[1]:
            found.add(line.split("|")[1].strip().strip("`"))
    return found


if __name__ == "__main__":
    print(render(), end="")
