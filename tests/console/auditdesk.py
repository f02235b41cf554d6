"""The broker's audit parts for the auditor-page tests: a real hash-chained log with
signed checkpoints, its shipper into a real event index (SQLite), a file recording
store, wired to a console app as ``broker.assembly`` wires ``hoshu serve``'s."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any

from audit.events import AuditEvent
from audit.index import EventQuery
from audit.recstore import RecordingStore
from audit.recstore.files import FileStore
from audit.service import AuditConfig, AuditRuntime, build_audit
from broker.console import audit as console_audit
from broker.live.recorder import Recording, RecordingSummary, default_opener, store_opener
from tests.support import poll_sync


@contextmanager
def audit_runtime(tmp: Path) -> Iterator[AuditRuntime]:
    """The audit log, signing key, index and shipping of a broker in ``tmp`` (running)."""
    audit = build_audit(
        AuditConfig(
            log_path=tmp / "audit" / "audit.log",
            signing_key_path=tmp / "audit-keys" / "audit-signing.key",
            cursor_dir=tmp / "audit" / "cursors",
            index_url=f"sqlite:///{tmp / 'audit-index.db'}",
            recordings_dir=tmp / "recordings",
            checkpoint_every=25,
        )
    )
    audit.start()
    try:
        yield audit
    finally:
        audit.stop()


def install(app: Any, audit: AuditRuntime, recordings: Path) -> console_audit.AuditDesk:
    """The console's audit pages on ``app`` reading ``audit`` and ``recordings``."""
    desk = console_audit.AuditDesk(
        index=audit.index,
        recordings=FileStore(recordings),
        verify=audit.verify,
        deployment=lambda: console_audit.deployment_facts(app.state.settings, audit.index),
    )
    app.state.audit_desk = desk
    if not any(getattr(r, "path", "") == "/console/audit" for r in app.routes):
        app.include_router(console_audit.router)
    return desk


def indexed(audit: AuditRuntime, event: AuditEvent | str, timeout: float = 15) -> None:
    """Wait until the shipper has put ``event`` (or every event up to now) in the index."""
    uid = event if isinstance(event, str) else str(event.get("EventUid"))
    poll_sync(
        lambda: any(
            str(e.get("EventUid")) == uid
            for e in audit.index.iterate(EventQuery(newest_first=True), max_rows=1_000_000)
        ),
        timeout,
        "the event in the audit index",
        interval_s=0.05,
    )


def record(
    recordings: Path, session_id: str, output: list[bytes], store: RecordingStore | None = None
) -> RecordingSummary:
    """A recording written by the broker's recorder: the header, then ``output`` (into
    ``store`` when given, else a file in ``recordings``)."""
    ticks = count()
    rec = Recording.open(
        recordings,
        session_id,
        width=80,
        height=24,
        env={"TERM": "xterm-256color"},
        title=f"hoshu {session_id}",
        monotonic=lambda: next(ticks) * 0.4,
        opener=store_opener(store) if store is not None else default_opener,
    )
    for chunk in output:
        rec.output(chunk)
    return rec.close()
