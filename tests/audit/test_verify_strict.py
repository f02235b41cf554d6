"""``hoshu audit verify`` as an auditor runs it: a rewritten log does not pass.

Anyone who can write the log can recompute every hash, so these tests forge
logs the way an attacker would -- edit one event, re-hash the whole file,
rewrite the ``.head`` file -- and check that the signed checkpoints (required
every ``checkpoint_every`` events and at the end, signed by the pinned key,
and matched against the SIEM's copies) make the forgery show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audit import new_event
from audit.chain import ChainLog, read_events, verify
from audit.events import AuditEvent
from audit.signing import CheckpointSigner, TrustedKeys
from audit.sinks.fluent import FluentForwardSink
from audit.sinks.syslog import SyslogSink
from broker.cli.main import main
from tests.fixtures.siem import DEADLINE_S, ForwardServer, Rsyslog
from tests.support import poll_sync

EVERY = 5


def _broker_log(tmp_path: Path, n: int = 12) -> tuple[Path, Path, CheckpointSigner]:
    """A broker's closed log and its public key as pinned at set-up (kept elsewhere)."""
    signer = CheckpointSigner.load_or_create(tmp_path / "broker" / "keys" / "audit_signing_key")
    log = tmp_path / "broker" / "audit" / "audit.log"
    with ChainLog(log, signer=signer, checkpoint_every=EVERY) as chain:
        for i in range(n):
            chain.emit(
                new_event("session.command", ActorUsername="tanaka", details={"command": f"ls {i}"})
            )
    pinned = tmp_path / "auditor" / "audit_signing_key.pub"
    pinned.parent.mkdir()
    pinned.write_bytes(signer.public_pem())
    return log, pinned, signer


def _rehash(log: Path, *, signer: CheckpointSigner | None, edit: str, to: str) -> None:
    """The attacker's rewrite: drop the checkpoints, edit one event, chain it all again
    (new positions, hashes, .head and -- with their own key -- new checkpoints)."""
    kept = [
        AuditEvent({k: v for k, v in e.record.items() if k not in ("ChainSeq", "ChainHash")})
        for e in read_events(log)
        if e.type != "audit.checkpoint"
    ]
    text = [json.dumps(e.record).replace(edit, to) for e in kept]
    forged = log.with_name("forged.log")
    with ChainLog(forged, signer=signer, checkpoint_every=EVERY) as chain:
        chain.append_many([AuditEvent(json.loads(t)) for t in text])
    for suffix in ("", ".head", ".checkpoint"):
        target = log.with_name(log.name + suffix)
        source = forged.with_name(forged.name + suffix)
        if source.exists():
            source.replace(target)
        else:
            target.unlink(missing_ok=True)


def _verify(log: Path, *extra: str) -> int:
    return main(["audit", "verify", "--log", str(log), "--checkpoint-every", str(EVERY), *extra])


def test_the_untouched_log_passes_with_the_pinned_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pinned, _ = _broker_log(tmp_path)
    assert _verify(log, "--key", str(pinned)) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 15 events, 3 checkpoints (signatures checked)")


def test_a_rehashed_log_without_its_checkpoints_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pinned, _ = _broker_log(tmp_path)
    _rehash(log, signer=None, edit='"ls 3"', to='"rm 3"')
    assert verify(log).ok  # self-consistent: the chain alone cannot tell
    assert _verify(log, "--key", str(pinned)) == 1
    out = capsys.readouterr().out
    assert "TAMPERED: first bad position 6" in out and "no signed checkpoint" in out


def test_a_rehashed_log_with_a_short_tail_and_no_checkpoints_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fewer events than checkpoint_every: only the closing checkpoint can betray it."""
    log, pinned, _ = _broker_log(tmp_path, n=3)
    _rehash(log, signer=None, edit='"ls 1"', to='"rm 1"')
    assert _verify(log, "--key", str(pinned)) == 1
    assert "not covered by a signed checkpoint" in capsys.readouterr().out


def test_a_rehashed_log_signed_by_another_key_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pinned, _ = _broker_log(tmp_path)
    attacker = CheckpointSigner.generate()
    _rehash(log, signer=attacker, edit='"ls 3"', to='"rm 3"')
    assert (
        json.loads(log.with_name("audit.log.checkpoint").read_text())["key_id"] == attacker.key_id
    )  # the .checkpoint file was forged too
    assert verify(
        log,
        keys=TrustedKeys([attacker.public_key]),
        checkpoint_every=EVERY,
        closed=True,
        sidecar=True,
    ).ok  # it passes only with the attacker's key
    assert _verify(log, "--key", str(pinned)) == 1
    assert "unknown key" in capsys.readouterr().out


def test_without_a_pinned_key_the_signatures_are_not_checked_and_verify_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, _, _ = _broker_log(tmp_path)
    _rehash(log, signer=CheckpointSigner.generate(), edit='"ls 3"', to='"rm 3"')
    assert _verify(log) == 1
    out = capsys.readouterr().out
    assert out.startswith("NOT VERIFIED") and "signatures were not checked" in out
    assert _verify(log, "--no-signatures") == 0  # asked for explicitly: the chain only
    assert "signatures NOT checked" in capsys.readouterr().out


def test_a_public_key_from_beside_the_log_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever rewrote the log could have replaced a key kept next to it."""
    log, _, signer = _broker_log(tmp_path)
    beside = log.with_name("audit_signing_key.pub")
    beside.write_bytes(signer.public_pem())
    assert _verify(log, "--key", str(beside)) == 2
    assert "beside the log" in capsys.readouterr().err
    monkeypatch.setenv("HOSHU_DATA_DIR", str(tmp_path / "broker"))
    in_data_dir = tmp_path / "broker" / "keys" / "audit_signing_key.pub"
    assert in_data_dir.exists()
    assert (
        main(["audit", "verify", "--checkpoint-every", str(EVERY), "--key", str(in_data_dir)]) == 2
    )
    assert "beside the log" in capsys.readouterr().err


def test_a_live_log_passes_only_with_allow_open_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pinned, signer = _broker_log(tmp_path)
    with ChainLog(log, signer=signer, checkpoint_every=EVERY) as live:
        live.emit(new_event("user.logout"))
        live.emit(new_event("user.logout"))
        assert _verify(log, "--key", str(pinned)) == 1
        assert "the last 2 events are not covered" in capsys.readouterr().out
        assert _verify(log, "--key", str(pinned), "--allow-open-tail") == 0
        assert "2 events not yet signed" in capsys.readouterr().out
    assert _verify(log, "--key", str(pinned)) == 0  # closing signed the tail


def test_a_large_batch_gets_its_checkpoints_in_the_middle(tmp_path: Path) -> None:
    signer = CheckpointSigner.generate()
    with ChainLog(tmp_path / "a.log", signer=signer, checkpoint_every=EVERY) as chain:
        chain.append_many([new_event("user.logout") for _ in range(12)])
    seqs = [
        e.details["seq"] for e in read_events(tmp_path / "a.log") if e.type == "audit.checkpoint"
    ]
    assert seqs == [5, 11, 14]
    assert verify(
        tmp_path / "a.log",
        keys=TrustedKeys([signer.public_key]),
        checkpoint_every=EVERY,
        closed=True,
        sidecar=True,
    ).ok


def _records(log: Path) -> list[dict[str, Any]]:
    return [dict(e.record) for e in read_events(log)]


def test_checkpoints_held_by_rsyslog_catch_a_rewrite_signed_with_the_real_key(
    tmp_path: Path, rsyslog: Rsyslog, capsys: pytest.CaptureFixture[str]
) -> None:
    """The log as rsyslog stored it (raw RFC 5424 lines) is the reference: cutting the
    last events off, even re-signed with the stolen key, no longer reaches it."""
    log, pinned, signer = _broker_log(tmp_path)
    records = _records(log)
    SyslogSink("127.0.0.1", rsyslog.port, timeout_s=5).send(records)
    poll_sync(
        lambda: len(rsyslog.uids()) >= len(records), DEADLINE_S, what="rsyslog to store the log"
    )
    assert _verify(log, "--key", str(pinned), "--checkpoint-from", str(rsyslog.out)) == 0
    assert "3 checkpoints from elsewhere matched" in capsys.readouterr().out
    # the key was stolen too: the attacker drops the last two commands and re-signs
    kept = [r for r in records if r["EventType"] != "audit.checkpoint"][:-2]
    for suffix in ("", ".head", ".checkpoint"):
        log.with_name(log.name + suffix).unlink()
    with ChainLog(log, signer=signer, checkpoint_every=EVERY) as chain:
        chain.append_many(
            [
                AuditEvent({k: v for k, v in r.items() if k not in ("ChainSeq", "ChainHash")})
                for r in kept
            ]
        )
    assert _verify(log, "--key", str(pinned)) == 0  # locally perfect
    capsys.readouterr()
    assert _verify(log, "--key", str(pinned), "--checkpoint-from", str(rsyslog.out)) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and ("truncated" in out or "rewritten" in out)


def test_checkpoints_held_by_fluentd_as_json_lines_catch_an_edit(
    tmp_path: Path, forward_server: ForwardServer, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pinned, signer = _broker_log(tmp_path)
    FluentForwardSink("127.0.0.1", forward_server.port, timeout_s=5).send(_records(log))
    poll_sync(
        lambda: len(forward_server.uids()) >= 15, DEADLINE_S, what="fluentd to receive the log"
    )
    siem = tmp_path / "siem.jsonl"  # what Fluentd's out_file keeps: one JSON per line
    siem.write_text("".join(json.dumps(r) + "\n" for r in forward_server.records))
    _rehash(log, signer=signer, edit='"ls 3"', to='"rm 3"')  # stolen key, re-signed
    assert _verify(log, "--key", str(pinned)) == 0
    capsys.readouterr()
    assert _verify(log, "--key", str(pinned), "--checkpoint-from", str(siem)) == 1
    assert "does not match the signed checkpoint" in capsys.readouterr().out


def test_a_siem_file_without_checkpoints_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pinned, _ = _broker_log(tmp_path)
    empty = tmp_path / "siem.jsonl"
    empty.write_text('{"EventType": "user.logout"}\n')
    assert _verify(log, "--key", str(pinned), "--checkpoint-from", str(empty)) == 2
    assert "no audit.checkpoint events" in capsys.readouterr().err


def test_the_brokers_daily_check_catches_a_log_rehashed_under_it(tmp_path: Path) -> None:
    from audit.service import AuditConfig, build_audit

    cfg = AuditConfig(
        log_path=tmp_path / "audit" / "audit.log",
        signing_key_path=tmp_path / "keys" / "k",
        cursor_dir=tmp_path / "c",
        index_url=f"sqlite:///{tmp_path / 'i.db'}",
        recordings_dir=tmp_path / "r",
        checkpoint_every=EVERY,
        checkpoint_interval_s=3600,
    )
    runtime = build_audit(cfg)
    try:
        for i in range(12):
            runtime.log.emit(new_event("session.command", details={"command": f"ls {i}"}))
        assert runtime.verify().ok
        records = [dict(e.record) for e in read_events(cfg.log_path)]
        kept = [r for r in records if r["EventType"] != "audit.checkpoint"]
        kept[3]["Details"] = {"command": "rm 3"}
        while len(kept) < runtime.log.seq:  # as many lines as the broker wrote
            kept.append(dict(new_event("user.logout").record))
        prev, lines = "0" * 64, []
        from audit.chain import chain_hash

        for seq, r in enumerate(kept, start=1):  # re-hashed, same length as the writer's
            r["ChainSeq"] = seq
            r["ChainHash"] = prev = chain_hash(prev, r)
            lines.append(json.dumps(r) + "\n")
        with open(cfg.log_path, "r+") as f:
            f.write("".join(lines))
            f.truncate()
        result = runtime.verify()
        assert not result.ok and "no signed checkpoint" in result.reason
    finally:
        runtime.shipping.stop()
        runtime.log.close()
