"""One catalog: the docs, the code and the Sentinel declaration agree with it."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType, ModuleType

import pytest

import audit.catalog
import audit.events
from audit import UnknownEventType, new_event, sentinel
from audit.catalog import CATALOG, EVENT_TYPES, Classification, EventType, Schema, event_type
from audit.docgen import documented_types, render
from audit.events import COLUMNS

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("audit", "broker", "gateway", "wire", "labsim")
_LITERAL = re.compile(r"""new_event\(\s*["']([A-Za-z0-9_.]+)["']""")
REQUIRED = {
    "user.login",
    "ssh.login",
    "user.mfa_failed",
    "user.locked_out",
    "request.created",
    "request.approved",
    "request.denied",
    "request.expired",
    "grant.created",
    "grant.revoked",
    "grant.expired",
    "session.started",
    "session.ended",
    "session.terminated",
    "forward.opened",
    "forward.closed",
    "file.transferred",
    "gateway.connected",
    "gateway.disconnected",
    "gateway.paused",
    "gateway.resumed",
    "instrument.key_changed",
    "admin.change",
    "audit.checkpoint",
    "audit.verification_failed",
    "audit.sink_lag",
    "report.signed",
    "report.unsigned",
    "audit.retention_deleted",
}


def _emitted_literals() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for m in _LITERAL.finditer(path.read_text(encoding="utf-8")):
                found.setdefault(m.group(1), []).append(str(path.relative_to(ROOT)))
    return found


def test_docs_list_exactly_the_catalog_types() -> None:
    """docs/audit-events.md names every catalog type and no other."""
    page = (ROOT / "docs" / "audit-events.md").read_text(encoding="utf-8")
    assert documented_types(page) == set(CATALOG), (
        "docs/audit-events.md is out of date: run `python -m audit.docgen > docs/audit-events.md`"
    )
    assert page == render(), "regenerate docs/audit-events.md with `python -m audit.docgen`"


def test_every_type_emitted_in_code_is_in_the_catalog() -> None:
    """A literal ``new_event("x.y")`` anywhere in the packages names a catalog type."""
    emitted = _emitted_literals()
    unknown = {t: where for t, where in emitted.items() if t not in CATALOG}
    assert not unknown, f"emitted but not in audit/catalog.py: {unknown}"
    assert "audit.checkpoint" in emitted  # the scan itself finds real call sites


def test_catalog_covers_the_required_activities() -> None:
    assert REQUIRED <= set(CATALOG)


def test_every_detail_is_classified_and_secrets_are_declared_as_such() -> None:
    for t in CATALOG.values():
        assert t.schema in Schema
        for key, cls in t.details.items():
            assert cls in Classification, (t.name, key)
    # the places a secret could appear are declared secret, so they are redacted
    assert CATALOG["user.login"].details["password"] is Classification.SECRET
    assert CATALOG["gateway.token_issued"].details["token"] is Classification.SECRET


def test_the_catalog_is_data_built_once_with_no_import_side_effect() -> None:
    """audit/catalog.py only declares: no call registers a type anywhere at import.

    Its top level holds imports, classes, functions and assignments, never a bare
    call, and of hoshu it imports only the audit errors, so there is no other
    module's registry it could fill.  Neither it nor the envelope keeps a mutable
    module-level container that code could add types (or columns) to later.
    """
    path = ROOT / "audit" / "catalog.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant), (
                f"catalog.py:{node.lineno} runs a statement at import"
            )
        else:
            assert isinstance(
                node,
                ast.Import
                | ast.ImportFrom
                | ast.ClassDef
                | ast.FunctionDef
                | ast.Assign
                | ast.AnnAssign,
            ), node.lineno
    ours = {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in PACKAGES
    }
    assert ours == {"audit.errors"}

    def mutable_globals(module: ModuleType) -> list[str]:
        return [
            name
            for name, value in vars(module).items()
            if not name.startswith("__") and isinstance(value, dict | list | set | bytearray)
        ]

    assert mutable_globals(audit.catalog) == []
    assert mutable_globals(audit.events) == []


def test_the_catalog_is_complete_whatever_is_imported_first() -> None:
    """A fresh interpreter that imports only the envelope can build every type."""
    code = (
        "from audit.events import new_event\n"
        "from audit.catalog import CATALOG, EVENT_TYPES\n"
        "assert [t.name for t in EVENT_TYPES] == list(CATALOG)\n"
        "for name in CATALOG:\n"
        "    assert new_event(name).type == name\n"
        "print(len(CATALOG))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(out.stdout) == len(EVENT_TYPES) == len(CATALOG) >= len(REQUIRED)


def test_the_catalog_cannot_be_changed_at_run_time() -> None:
    """No type can be added, replaced or altered once the catalog is built."""
    assert isinstance(CATALOG, MappingProxyType)
    with pytest.raises(TypeError):
        CATALOG["x.new"] = EventType("x.new", Schema.AUDIT_EVENT, "added late")  # type: ignore[index]
    login = CATALOG["user.login"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        login.severity = login.severity
    with pytest.raises(TypeError):
        login.details["password"] = Classification.PUBLIC
    assert login.details["password"] is Classification.SECRET
    # a record keeps its own read-only copy of the details it was given
    given = {"k": Classification.PUBLIC}
    t = EventType("x.copy", Schema.AUDIT_EVENT, "copy", details=given)
    given["k"] = Classification.SECRET
    assert t.details["k"] is Classification.PUBLIC


def test_new_event_refuses_a_type_outside_the_catalog() -> None:
    """An unknown type names itself in the error; a known one is the catalog's own record."""
    with pytest.raises(UnknownEventType, match=r"'user\.logon' is not in the audit catalog"):
        new_event("user.logon")
    with pytest.raises(UnknownEventType, match=r"'user\.logon' is not in the audit catalog"):
        event_type("user.logon")
    assert event_type("user.login") is CATALOG["user.login"]
    assert "user.logon" not in CATALOG


def test_sentinel_declaration_matches_the_columns() -> None:
    """infra/bicep/audit-table.json is the generated declaration of COLUMNS."""
    on_disk = json.loads((ROOT / "infra" / "bicep" / "audit-table.json").read_text())
    assert on_disk == sentinel.table_declaration()
    assert [c["name"] for c in on_disk["columns"]] == [c.name for c in COLUMNS]


def test_event_times_are_utc_and_naive_times_are_refused() -> None:
    from datetime import datetime, timedelta, timezone

    from audit import InvalidEvent

    jst = timezone(timedelta(hours=9))
    e = new_event("user.logout", clock=lambda: datetime(2026, 4, 1, 9, 0, tzinfo=jst))
    assert e.time == "2026-04-01T00:00:00.000000Z"
    with pytest.raises(InvalidEvent, match="timezone"):
        new_event("user.logout", clock=lambda: datetime(2026, 4, 1, 9, 0))


def test_every_refusal_event_takes_the_reason_a_refused_call_writes() -> None:
    """A refused API or console call writes its action's ``*.refused`` event with
    ``details={"reason": ...}`` (broker.api.errors); a type that did not declare it
    would turn the refusal's audit record into an error instead."""
    from broker.access.permissions import PERMISSIONS, refusal_event

    for action in PERMISSIONS:
        kind = refusal_event(action)
        event = new_event(kind, details={"reason": f"{action} refused"})
        assert event.details == {"reason": f"{action} refused"}, kind
