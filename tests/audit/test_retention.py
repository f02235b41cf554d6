"""Retention: nothing goes before its time, and every deletion is an event first."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit import new_event
from audit.errors import ChainError
from audit.index import AuditIndex, EventQuery
from audit.retention import Retention, RetentionError, RetentionPolicy
from audit.testing import CapturingEmitter, FailingEmitter
from tests.support import FakeClock

NOW = datetime(2027, 1, 1, tzinfo=UTC)


def _index(tmp_path: Path) -> AuditIndex:
    index = AuditIndex.from_url(f"sqlite:///{tmp_path / 'i.db'}")
    index.add(
        [
            new_event("user.logout", clock=FakeClock(NOW - timedelta(days=d))).record
            for d in (400, 366, 364, 10)
        ]
    )
    return index


def _recordings(tmp_path: Path) -> Path:
    d = tmp_path / "rec"
    d.mkdir()
    for name, age in (("old", 200), ("young", 20)):
        p = d / f"{name}.cast"
        p.write_text("{}\n")
        t = (NOW - timedelta(days=age)).timestamp()
        os.utime(p, (t, t))
    return d


def test_only_data_older_than_its_period_is_deleted_and_it_is_logged(tmp_path: Path) -> None:
    index, rec = _index(tmp_path), _recordings(tmp_path)
    em = CapturingEmitter()
    result = Retention(
        RetentionPolicy(events_days=365, recordings_days=90),
        em,
        index=index,
        recordings_dir=rec,
        clock=lambda: NOW,
    ).run()
    assert (result.events_deleted, result.recordings_deleted) == (2, 1)
    assert index.count() == 2 and [p.name for p in rec.iterdir()] == ["young.cast"]
    left = sorted(e["TimeGenerated"] for e in index.iterate(EventQuery()))
    assert left[0].startswith("2026-01-02")  # 364 days old: kept
    deleted = em.of_type("audit.retention_deleted")
    assert [(e.details["kind"], e.details["count"]) for e in deleted] == [
        ("events", 2),
        ("recordings", 1),
    ]


def test_default_policy_keeps_everything(tmp_path: Path) -> None:
    index, rec = _index(tmp_path), _recordings(tmp_path)
    em = CapturingEmitter()
    Retention(RetentionPolicy(), em, index=index, recordings_dir=rec, clock=lambda: NOW).run()
    assert index.count() == 4 and len(list(rec.iterdir())) == 2 and em.events == []


def test_periods_below_the_minimum_are_refused() -> None:
    with pytest.raises(RetentionError, match="shorter than the minimum"):
        RetentionPolicy(events_days=7)


def test_if_the_deletion_cannot_be_logged_nothing_is_deleted(tmp_path: Path) -> None:
    index, rec = _index(tmp_path), _recordings(tmp_path)
    with pytest.raises(ChainError):
        Retention(
            RetentionPolicy(events_days=365, recordings_days=90),
            FailingEmitter(),
            index=index,
            recordings_dir=rec,
            clock=lambda: NOW,
        ).run()
    assert index.count() == 4 and len(list(rec.iterdir())) == 2
