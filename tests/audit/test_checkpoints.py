"""Signed checkpoints: written periodically, shipped as events, checked by verify."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit import new_event
from audit.chain import ChainLog, read_events, verify
from audit.signing import Checkpoint, CheckpointSigner, TrustedKeys
from tests.support import FakeClock

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def _write(
    path: Path, signer: CheckpointSigner, n: int, every: int = 10, clock: FakeClock | None = None
) -> None:
    with ChainLog(
        path,
        signer=signer,
        checkpoint_every=every,
        checkpoint_interval_s=3600,
        clock=clock or FakeClock(T0),
    ) as log:
        for i in range(n):
            log.emit(new_event("session.command", details={"command": f"ls {i}"}))


def test_checkpoint_every_n_events_signed_and_verified(tmp_path: Path) -> None:
    signer = CheckpointSigner.generate()
    log = tmp_path / "audit.log"
    _write(log, signer, 25)
    cps = [e for e in read_events(log) if e.type == "audit.checkpoint"]
    assert [e.details["seq"] for e in cps] == [10, 21, 27]  # the last one: on close
    assert all(e.details["key_id"] == signer.key_id for e in cps)
    result = verify(
        log, keys=TrustedKeys([signer.public_key]), checkpoint_every=10, closed=True, sidecar=True
    )
    assert result.ok and result.checkpoints == 3 and result.signatures_checked


def test_checkpoint_after_interval_even_with_few_events(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    signer = CheckpointSigner.generate()
    log_path = tmp_path / "audit.log"
    with ChainLog(
        log_path, signer=signer, checkpoint_every=1000, checkpoint_interval_s=60, clock=clock
    ) as log:
        log.emit(new_event("user.logout"))
        assert log.maybe_checkpoint() is None
        clock.now += timedelta(seconds=61)
        cp = log.maybe_checkpoint()
        assert cp is not None and cp.seq == 1
        clock.now += timedelta(seconds=61)
        assert log.maybe_checkpoint() is None  # nothing new since: no empty checkpoints
    assert verify(log_path, keys=TrustedKeys([signer.public_key])).checkpoints == 1


def test_reopened_log_keeps_counting_from_its_last_checkpoint(tmp_path: Path) -> None:
    signer = CheckpointSigner.generate()
    log = tmp_path / "audit.log"
    _write(log, signer, 8)
    _write(log, signer, 8)
    seqs = [e.details["seq"] for e in read_events(log) if e.type == "audit.checkpoint"]
    assert seqs == [8, 17]  # each close signs what it wrote; counting restarts after it


def test_forged_checkpoint_signature_is_caught(tmp_path: Path) -> None:
    signer, other = CheckpointSigner.generate(), CheckpointSigner.generate()
    log = tmp_path / "audit.log"
    _write(log, other, 12)
    result = verify(log, keys=TrustedKeys([signer.public_key]))
    assert not result.ok and result.first_bad == 11 and "unknown key" in result.reason


def test_truncation_before_the_shipped_checkpoint_is_caught(tmp_path: Path) -> None:
    """Cutting the tail and rewriting the head file cannot hide from an off-site checkpoint."""
    signer = CheckpointSigner.generate()
    log = tmp_path / "audit.log"
    _write(log, signer, 30)
    shipped = Checkpoint.from_details(json.loads(log.with_name("audit.log.checkpoint").read_text()))
    assert shipped.seq == 32
    lines = log.read_text().splitlines(keepends=True)[:15]
    log.write_text("".join(lines))
    last = json.loads(lines[-1])
    log.with_name("audit.log.head").write_text(f"15 {last['ChainHash']}")
    assert verify(log).ok  # locally consistent ...
    result = verify(log, keys=TrustedKeys([signer.public_key]), checkpoint=shipped)
    assert not result.ok and result.first_bad == 16 and "truncated" in result.reason


def test_rewritten_log_does_not_match_the_shipped_checkpoint(tmp_path: Path) -> None:
    signer = CheckpointSigner.generate()
    log, other = tmp_path / "audit.log", tmp_path / "other.log"
    _write(log, signer, 12)
    shipped = Checkpoint.from_details(json.loads(log.with_name("audit.log.checkpoint").read_text()))
    with ChainLog(other) as forged:  # a complete, self-consistent forgery
        for i in range(14):
            forged.emit(new_event("session.command", details={"command": f"rm {i}"}))
    assert verify(other).ok and shipped.seq == 13  # the checkpoint written on close
    result = verify(other, checkpoint=shipped, keys=TrustedKeys([signer.public_key]))
    assert not result.ok and result.first_bad == 13 and "rewritten" in result.reason


def test_edited_checkpoint_is_caught(tmp_path: Path) -> None:
    signer = CheckpointSigner.generate()
    log = tmp_path / "audit.log"
    _write(log, signer, 12)
    text = log.read_text()
    rec = json.loads(text.splitlines()[10])
    assert rec["EventType"] == "audit.checkpoint"
    result = verify(
        log,
        keys=TrustedKeys([signer.public_key]),
        checkpoint=Checkpoint(10, rec["Details"]["hash"], "AAAA", signer.key_id),
    )
    assert not result.ok and "bad signature" in result.reason


def test_signing_key_is_created_once_and_reloaded(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "audit_signing_key"
    a = CheckpointSigner.load_or_create(key)
    b = CheckpointSigner.load_or_create(key)
    assert a.key_id == b.key_id and oct(key.stat().st_mode & 0o777) == "0o600"
    assert (
        TrustedKeys.from_pem_files([key.with_name(key.name + ".pub")]).check(a.sign(3, "ab" * 32))
        is None
    )
