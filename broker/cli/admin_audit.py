"""Where the CLI's own administration commands write their audit events.

``hoshu admin bootstrap`` and ``hoshu admin keys rotate`` run on the broker host
without a running broker.  With ``audit_store = "file"`` they append to the
broker's file log, as before.  With ``audit_store = "postgres"`` a local file
would be lost with the container's disk, so they write to the PostgreSQL store
the broker writes to: a chain of their own, ``<replica id>.admin`` (the running
broker holds its own chain's writer lock), signed with the broker's key store's
checkpoint key and closed with a checkpoint.  ``hoshu audit verify --store``
checks it with the others, and the brokers' orphan shipping sends it to the sinks.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from audit.emitter import Emitter
from audit.errors import ChainError
from broker.cli.client import CliError

ADMIN_SUFFIX = ".admin"


def admin_chain_id(settings: Any) -> str:
    """The chain this host's admin commands write (``HOSHU_REPLICA_ID``, else the host)."""
    return (settings.replica_id or socket.gethostname()) + ADMIN_SUFFIX


@contextlib.contextmanager
def admin_audit_log(settings: Any, keys: Any) -> Iterator[Emitter]:
    """The emitter for one admin command; ``keys``: the broker's open key store (its
    checkpoint signer signs the PostgreSQL chain).  Fails closed: no store, no command."""
    from audit.chain import ChainLog

    if settings.audit_store != "postgres":
        settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True)
        with ChainLog(settings.audit_log_path) as log:
            yield log
        return
    from audit.pgchain import PgChainLog, store_engine
    from broker.identity import database_password

    url = settings.audit_store_url or settings.db_url
    try:
        engine = store_engine(url, password=database_password(settings))
    except ChainError as exc:
        raise CliError(f"the audit store is unreachable: {exc}") from exc
    try:
        try:
            chain = PgChainLog(
                engine,
                admin_chain_id(settings),
                signer=keys.checkpoint_signer(),
                checkpoint_every=settings.audit_checkpoint_every,
                hostname=socket.gethostname(),
                lock_wait_s=15.0,  # another admin command, or a broker shipping this chain
            )
        except ChainError as exc:
            raise CliError(f"cannot open the audit chain: {exc}") from exc
        with chain:
            yield chain
    finally:
        engine.dispose()
