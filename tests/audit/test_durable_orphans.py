"""A chain whose replica was killed and never returns under its id is finished by
another broker: its tail is signed and shipped from the cursor rows; a chain whose
writer is alive is left alone.  Real PostgreSQL; the dead writer is a real process
killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from audit import new_event
from audit.pgchain import PgChainLog, PgCursorStore, PgOutbox, store_engine, verify_chain
from audit.pgship import OrphanChains
from audit.shipper import Shipper
from audit.signing import CheckpointSigner, TrustedKeys

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


class _Collect:
    def __init__(self, name: str, got: list[Mapping[str, Any]]) -> None:
        self.name = name
        self.got = got

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.got.extend(records)

    def close(self) -> None:
        return None


def _killed_writer(db: str, key: Path, chain: str, n: int) -> None:
    """A broker process that wrote ``n`` events (none shipped) and was SIGKILLed."""
    code = textwrap.dedent(f"""
        import os, signal
        from audit import new_event
        from audit.pgchain import PgChainLog, store_engine
        from audit.signing import CheckpointSigner
        log = PgChainLog(store_engine({db!r}), {chain!r},
                         signer=CheckpointSigner.load_or_create({str(key)!r}),
                         checkpoint_every=10)
        for i in range({n}):
            log.emit(new_event("admin.change", ActorUsername=f"dead{{i}}",
                               Operation="update", Object="x", ObjectType="policy"))
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == -signal.SIGKILL and "written" in r.stdout, r.stderr


def _orphans(
    engine: Engine, signer: CheckpointSigner, got: list[Mapping[str, Any]]
) -> OrphanChains:
    def make(outbox: PgOutbox, cursors: PgCursorStore) -> list[Shipper]:
        return [Shipper(_Collect("siem", got), outbox, cursors)]

    return OrphanChains(
        engine, "replica-new", sinks=["siem"], make_shippers=make, signer=signer, every_s=3600
    )


def test_a_dead_replicas_chain_is_signed_and_shipped_by_another_broker(
    db: str, tmp_path: Path
) -> None:
    _killed_writer(db, tmp_path / "dead.key", "replica-dead", 25)
    engine = store_engine(db)
    try:
        live = CheckpointSigner.generate()
        keys = TrustedKeys.from_pems([(tmp_path / "dead.key.pub").read_bytes(), live.public_pem()])
        before = verify_chain(engine, "replica-dead", keys=keys, checkpoint_every=10, closed=True)
        assert not before.ok and "not covered by a signed checkpoint" in before.reason
        got: list[Mapping[str, Any]] = []
        orphans = _orphans(engine, live, got)
        assert orphans.pending() == ["replica-dead"]
        assert orphans.run_once() == {"replica-dead": 25 + 2 + 1}
        names = [r["ActorUsername"] for r in got if r["EventType"] == "admin.change"]
        assert names == [f"dead{i}" for i in range(25)]
        after = verify_chain(engine, "replica-dead", keys=keys, checkpoint_every=10, closed=True)
        assert after.ok, after.reason
        assert orphans.pending() == [] and orphans.run_once() == {}  # nothing shipped twice
    finally:
        engine.dispose()


def test_a_chain_whose_writer_is_alive_is_left_to_it(db: str) -> None:
    engine = store_engine(db)
    try:
        with PgChainLog(engine, "replica-alive", signer=CheckpointSigner.generate()) as log:
            log.emit(
                new_event(
                    "admin.change",
                    ActorUsername="a",
                    Operation="update",
                    Object="x",
                    ObjectType="policy",
                )
            )
            got: list[Mapping[str, Any]] = []
            orphans = _orphans(engine, CheckpointSigner.generate(), got)
            assert orphans.pending() == ["replica-alive"]  # behind, but not dead
            assert orphans.run_once() == {} and got == []
    finally:
        engine.dispose()
