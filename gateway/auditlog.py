"""The hospital's local audit copy and the outbox of events the broker has not acked.

Every event goes to a hash-chained log (:class:`audit.chain.ChainLog`) in the
gateway's state directory first; the hospital keeps that file and can check
it offline (``hoshu-gateway verify-audit``).  Events are then forwarded to the
broker; the position of the last event the broker acknowledged is kept in a
``.acked`` file beside the log, so an event is re-sent until it is acked
(at-least-once; the broker de-duplicates on the chain position and EventUid).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from audit.chain import ChainLog, read_events
from audit.events import AuditEvent, new_event
from wire import FORWARDED_EVENT_TYPES


class LocalAudit:
    """Writes gateway events to the local chain and tracks what the broker has."""

    def __init__(
        self,
        path: Path,
        *,
        gateway_name: str,
        version: str,
        clock: Callable[[], datetime],
        gateway_id: str | None = None,
        hospital_id: str | None = None,
        fsync: bool = True,
    ) -> None:
        self.path = path
        self._acked_path = path.with_name(path.name + ".acked")
        self._clock = clock
        self._name = gateway_name
        self._version = version
        self._gateway_id = gateway_id
        self._hospital_id = hospital_id
        self._lock = threading.Lock()
        self._chain = ChainLog(path, fsync=fsync)
        self._acked = self._read_acked()
        self._pending: list[dict[str, Any]] = (
            [
                dict(e.record)
                for e in read_events(path)
                if int(e.get("ChainSeq", 0)) > self._acked and e.type in FORWARDED_EVENT_TYPES
            ]
            if path.exists()
            else []
        )
        self._sent_upto = self._acked
        self.on_new: Callable[[], None] | None = None

    def _read_acked(self) -> int:
        try:
            text = self._acked_path.read_text().strip()
            return max(0, int(text)) if text else 0
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            return 0  # an unreadable cursor only means re-sending; the broker de-duplicates

    def record(
        self, type_: str, *, details: dict[str, Any] | None = None, **columns: Any
    ) -> AuditEvent:
        """Write one event to the local chain (raises ChainError if it cannot be written)."""
        event = new_event(
            type_,
            clock=self._clock,
            details=details,
            DvcHostname=self._name,
            DvcRole="gateway",
            EventProductVersion=self._version,
            GatewayId=self._gateway_id,
            HospitalId=self._hospital_id,
            **columns,
        )
        stored = self._chain.emit(event)
        if stored.type in FORWARDED_EVENT_TYPES:
            with self._lock:
                self._pending.append(dict(stored.record))
            if self.on_new is not None:
                self.on_new()
        return stored

    def next_batch(self, limit: int) -> list[dict[str, Any]]:
        """Events not yet sent on the current connection, in chain order."""
        with self._lock:
            batch = [r for r in self._pending if int(r["ChainSeq"]) > self._sent_upto][:limit]
            if batch:
                self._sent_upto = int(batch[-1]["ChainSeq"])
            return batch

    def unsend(self) -> None:
        """The connection dropped: everything not acked is to be sent again."""
        with self._lock:
            self._sent_upto = self._acked

    def acked(self, upto_seq: int) -> None:
        """The broker stored every event up to ``upto_seq``."""
        with self._lock:
            if upto_seq <= self._acked or upto_seq > self._chain.seq:
                return
            self._acked = upto_seq
            self._pending = [r for r in self._pending if int(r["ChainSeq"]) > upto_seq]
            tmp = self._acked_path.with_name(self._acked_path.name + ".tmp")
            tmp.write_text(str(upto_seq))
            os.replace(tmp, self._acked_path)

    @property
    def unacked(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def acked_seq(self) -> int:
        return self._acked

    def close(self) -> None:
        self._chain.close()
