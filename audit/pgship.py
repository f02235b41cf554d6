"""Finishing the chains of replicas that are gone (the PostgreSQL audit store).

Each replica ships its own chain (:mod:`audit.pgchain`).  A replica that was
killed and comes back under another id (a Container Apps replica gets a new
host name) would leave its chain's unshipped tail and unsigned last events
behind.  :class:`OrphanChains` runs in every broker: every ``every_s`` it looks
for chains of other replicas that a sink has not acknowledged to the end, or
whose last events no checkpoint covers, and for each one whose writer is gone
(its writer lock is free) it takes that lock, signs the tail with this broker's
key (an ``audit.checkpoint`` appended to that chain), ships the chain to every
sink from the cursor rows for at most ``round_s``, and lets the lock go.  A
chain whose writer is alive is left alone; one whose writer comes back while it
is being finished waits (``lock_wait_s`` of :class:`~audit.pgchain.PgChainLog`).

Delivery stays at least once: two brokers never finish one chain at the same
time (the writer lock), and cursors only move after a sink acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from audit.errors import ChainError
from audit.outbox import OutboxError
from audit.pgchain import (
    PgChainLog,
    PgCursorStore,
    PgOutbox,
    chains_table,
    cursors_table,
)
from audit.shipper import Shipper
from audit.signing import CheckpointSigner

log = logging.getLogger(__name__)

MakeShippers = Callable[[PgOutbox, PgCursorStore], list[Shipper]]


class OrphanChains:
    """Signs and ships the chains other replicas left behind (see the module doc)."""

    def __init__(
        self,
        engine: Engine,
        own_chain: str,
        *,
        sinks: Sequence[str],
        make_shippers: MakeShippers,
        signer: CheckpointSigner | None,
        hostname: str | None = None,
        every_s: float = 30.0,
        round_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.own = own_chain
        self.sinks = list(sinks)
        self.make_shippers = make_shippers
        self.signer = signer
        self.hostname = hostname
        self.every_s = every_s
        self.round_s = round_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pending(self) -> list[str]:
        """Chains of other replicas that a sink has not acknowledged to their end, or
        whose last events are not covered by a checkpoint."""
        c, k = chains_table.c, cursors_table.c
        with self.engine.connect() as conn:
            heads = conn.execute(
                select(c.chain_id, c.seq, c.checkpoint_seq).where(c.chain_id != self.own, c.seq > 0)
            ).all()
            acked: dict[tuple[str, str], int] = {
                (r.chain_id, r.sink): int(r.seq)
                for r in conn.execute(select(k.chain_id, k.sink, k.seq))
            }
        out = []
        for h in heads:
            unsigned = self.signer is not None and (h.checkpoint_seq or 0) + 1 < h.seq
            behind = any(acked.get((h.chain_id, s), 0) < h.seq for s in self.sinks)
            if unsigned or behind:
                out.append(str(h.chain_id))
        return out

    def finish(self, chain: str) -> int | None:
        """Sign and ship one chain if its writer is gone; returns the events the sinks
        acknowledged (None: its writer is alive, or the chain cannot be opened)."""
        try:
            writer = PgChainLog(
                self.engine,
                chain,
                signer=self.signer,
                hostname=self.hostname,
                commit_timeout_s=10.0,
            )
        except ChainError as exc:  # alive (busy), or damaged: hoshu audit verify names it
            log.debug("audit chain %s not finished here: %s", chain, exc)
            return None
        shipped = 0
        try:
            writer.checkpoint()  # the dead writer's tail, signed by this broker
            deadline = time.monotonic() + self.round_s
            for shipper in self.make_shippers(
                PgOutbox(self.engine, chain), PgCursorStore(self.engine, chain)
            ):
                try:
                    while time.monotonic() < deadline:
                        n = shipper.ship_once()
                        shipped += n
                        if n == 0:
                            break
                except OutboxError as exc:  # shown in that sink's next status; retried
                    log.warning("audit chain %s to sink %s: %s", chain, shipper.sink.name, exc)
                finally:
                    shipper.sink.close()
        finally:
            writer.close()
        return shipped

    def run_once(self) -> dict[str, int]:
        done: dict[str, int] = {}
        try:
            chains = self.pending()
        except SQLAlchemyError as exc:
            log.warning("cannot look for audit chains left behind: %s", type(exc).__name__)
            return done
        for chain in chains:
            if self._stop.is_set():
                break
            n = self.finish(chain)
            if n is not None:
                done[chain] = n
        return done

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-orphan-chains", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.run_once()
            except Exception:  # retried next round; never stops the broker
                log.exception("finishing audit chains left behind failed")

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
