"""Generic repository over the tables: entities in, entities out.

Errors from the driver are translated once here: a unique-constraint clash
becomes :class:`broker.access.errors.Conflict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from broker.access.errors import Conflict
from broker.store.tables import TABLES

E = TypeVar("E")


def _values(obj: object) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


class SqlTx:
    """One transaction; implements :class:`broker.access.ports.Tx`."""

    def __init__(self, conn: sa.Connection, *, for_update: bool) -> None:
        self.conn = conn
        self._for_update = for_update

    def add(self, obj: object) -> None:
        try:
            self.conn.execute(TABLES[type(obj)].insert().values(**_values(obj)))
        except IntegrityError as exc:
            raise Conflict(
                f"a {type(obj).__name__.lower()} with that name or key already exists"
            ) from exc

    def save(self, obj: object) -> None:
        table = TABLES[type(obj)]
        values = _values(obj)
        try:
            self.conn.execute(table.update().where(table.c.id == values.pop("id")).values(**values))
        except IntegrityError as exc:
            raise Conflict("that change clashes with an existing object") from exc

    def get(self, kind: type[E], id: str, /, *, for_update: bool = False) -> E | None:
        table = TABLES[kind]
        stmt = sa.select(table).where(table.c.id == id)
        if for_update and self._for_update:
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).first()
        return kind(**row._mapping) if row is not None else None

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
        table = TABLES[kind]
        stmt = sa.select(table)
        for key, value in where.items():
            if key.endswith("__gte"):
                stmt = stmt.where(table.c[key[:-5]] >= value)
            elif key.endswith("__lt"):
                stmt = stmt.where(table.c[key[:-4]] < value)
            elif isinstance(value, list | tuple | set | frozenset):
                stmt = stmt.where(table.c[key].in_(list(value)))
            elif value is None:
                stmt = stmt.where(table.c[key].is_(None))
            else:
                stmt = stmt.where(table.c[key] == value)
        if order_by:
            col = table.c[order_by.lstrip("-")]
            stmt = stmt.order_by(col.desc() if order_by.startswith("-") else col.asc(), table.c.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        if for_update and self._for_update:
            stmt = stmt.with_for_update(skip_locked=True)
        return [kind(**row._mapping) for row in self.conn.execute(stmt)]

    def one(self, kind: type[E], /, **where: Any) -> E | None:
        found = self.find(kind, limit=1, **where)
        return found[0] if found else None
