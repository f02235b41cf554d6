"""In-memory twin of the store, for tests of code built on the services.

Same contract as :class:`broker.store.repo.SqlTx`: entities are copied in and
out (callers cannot mutate stored rows behind its back), unique names clash
with :class:`Conflict`, and a transaction that raises leaves nothing behind.
Transactions are serialized by one lock, as ``BEGIN IMMEDIATE`` does on SQLite.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from broker.access.errors import Conflict
from broker.store.tables import UNIQUE

E = TypeVar("E")
Rows = dict[type, dict[str, Any]]


def _match(obj: object, key: str, value: Any) -> bool:
    if key.endswith("__gte"):
        return bool(getattr(obj, key[:-5]) >= value)
    if key.endswith("__lt"):
        return bool(getattr(obj, key[:-4]) < value)
    current = getattr(obj, key)
    if isinstance(value, list | tuple | set | frozenset):
        return current in value
    return bool(current == value)


class MemoryTx:
    """One transaction over the in-memory rows; implements ``broker.access.ports.Tx``."""

    def __init__(self, rows: Rows) -> None:
        self._rows = rows

    def _check_unique(self, obj: object) -> None:
        for col in UNIQUE.get(type(obj), []):
            value = getattr(obj, col)
            for other in self._rows[type(obj)].values():
                if other.id != obj.id and getattr(other, col) == value:  # type: ignore[attr-defined]
                    raise Conflict(
                        f"a {type(obj).__name__.lower()} with that name or key already exists"
                    )

    def add(self, obj: object) -> None:
        table = self._rows.setdefault(type(obj), {})
        if obj.id in table:  # type: ignore[attr-defined]
            raise Conflict("duplicate id")
        self._check_unique(obj)
        table[obj.id] = copy.deepcopy(obj)  # type: ignore[attr-defined]

    def save(self, obj: object) -> None:
        table = self._rows.setdefault(type(obj), {})
        if obj.id in table:  # type: ignore[attr-defined]
            self._check_unique(obj)
            table[obj.id] = copy.deepcopy(obj)  # type: ignore[attr-defined]

    def get(self, kind: type[E], id: str, /, *, for_update: bool = False) -> E | None:
        row = self._rows.get(kind, {}).get(id)
        return copy.deepcopy(row) if row is not None else None

    def find(
        self,
        kind: type[E],
        /,
        *,
        order_by: str | None = None,
        limit: int | None = None,
        for_update: bool = False,
        **where: Any,
    ) -> list[E]:
        rows = [
            r
            for r in self._rows.get(kind, {}).values()
            if all(_match(r, k, v) for k, v in where.items())
        ]
        if order_by:
            name = order_by.lstrip("-")
            rows.sort(key=lambda r: r.id)
            rows.sort(key=lambda r: getattr(r, name), reverse=order_by.startswith("-"))
        if limit is not None:
            rows = rows[:limit]
        return [copy.deepcopy(r) for r in rows]

    def one(self, kind: type[E], /, **where: Any) -> E | None:
        found = self.find(kind, limit=1, **where)
        return found[0] if found else None


class MemoryStore:
    """A store that lives in this process only (``store.uow`` as with :class:`Store`)."""

    def __init__(self) -> None:
        self._rows: Rows = {}
        self._lock = threading.RLock()

    @contextmanager
    def uow(self) -> Iterator[MemoryTx]:
        with self._lock:
            snapshot = {kind: dict(table) for kind, table in self._rows.items()}
            try:
                yield MemoryTx(self._rows)
            except BaseException:
                self._rows.clear()
                self._rows.update(snapshot)
                raise

    def count(self, kind: type) -> int:
        with self._lock:
            return len(self._rows.get(kind, {}))

    def close(self) -> None:
        pass
