"""One catalog: the docs, the code and the Sentinel declaration agree with it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from audit import new_event, sentinel
from audit.docgen import documented_types, render
from audit.events import COLUMNS, Classification, Schema, catalog

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("audit", "broker", "gateway", "wire", "labsim")
_LITERAL = re.compile(r"""new_event\(\s*["']([A-Za-z0-9_.]+)["']""")
REQUIRED = {
    "user.login", "ssh.login", "user.mfa_failed", "user.locked_out", "request.created",
    "request.approved", "request.denied", "request.expired", "grant.created",
    "grant.revoked", "grant.expired", "session.started", "session.ended",
    "session.terminated", "forward.opened", "forward.closed", "file.transferred",
    "gateway.connected", "gateway.disconnected", "gateway.paused", "gateway.resumed",
    "instrument.key_changed", "admin.change", "audit.checkpoint",
    "audit.verification_failed", "audit.sink_lag", "report.signed", "report.unsigned",
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
    assert documented_types(page) == set(catalog()), (
        "docs/audit-events.md is out of date: run "
        "`python -m audit.docgen > docs/audit-events.md`")
    assert page == render(), "regenerate docs/audit-events.md with `python -m audit.docgen`"


def test_every_type_emitted_in_code_is_in_the_catalog() -> None:
    """A literal ``new_event("x.y")`` anywhere in the packages names a catalog type."""
    emitted = _emitted_literals()
    unknown = {t: where for t, where in emitted.items() if t not in catalog()}
    assert not unknown, f"emitted but not in audit/catalog.py: {unknown}"
    assert "audit.checkpoint" in emitted  # the scan itself finds real call sites


def test_catalog_covers_the_required_activities() -> None:
    assert REQUIRED <= set(catalog())


def test_every_detail_is_classified_and_secrets_are_declared_as_such() -> None:
    for spec in catalog().values():
        assert spec.schema in Schema
        for key, cls in spec.details.items():
            assert cls in Classification, (spec.type, key)
    # the places a secret could appear are declared secret, so they are redacted
    assert catalog()["user.login"].details["password"] is Classification.SECRET
    assert catalog()["gateway.token_issued"].details["token"] is Classification.SECRET


def test_sentinel_declaration_matches_the_columns() -> None:
    """infra/bicep/audit-table.json is the generated declaration of COLUMNS."""
    on_disk = json.loads((ROOT / "infra" / "bicep" / "audit-table.json").read_text())
    assert on_disk == sentinel.table_declaration()
    assert [c["name"] for c in on_disk["columns"]] == [c.name for c in COLUMNS]


def test_event_times_are_utc_and_naive_times_are_refused() -> None:
    from datetime import datetime, timedelta, timezone

    import pytest

    from audit import InvalidEvent

    jst = timezone(timedelta(hours=9))
    e = new_event("user.logout", clock=lambda: datetime(2026, 4, 1, 9, 0, tzinfo=jst))
    assert e.time == "2026-04-01T00:00:00.000000Z"
    with pytest.raises(InvalidEvent, match="timezone"):
        new_event("user.logout", clock=lambda: datetime(2026, 4, 1, 9, 0))
