"""The throwaway PostgreSQL fixture gives each module a working, private database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.fixtures.postgres import create_database, drop_database

pytestmark = pytest.mark.postgres


def test_postgres_url_answers_select_1(postgres_url: str) -> None:
    """The server started from the installed binaries answers queries over TCP."""
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            user = conn.execute(sa.text("select current_user")).scalar_one()
            assert user == "hoshu"
    finally:
        engine.dispose()


def test_module_database_is_fresh_and_writable(postgres_module_url: str) -> None:
    """A module's own database starts empty and accepts tables and rows."""
    engine = sa.create_engine(postgres_module_url)
    try:
        with engine.begin() as conn:
            tables = conn.execute(
                sa.text(
                    "select count(*) from information_schema.tables where table_schema='public'"
                )
            ).scalar_one()
            assert tables == 0
            conn.execute(sa.text("create table probe (id int primary key)"))
            conn.execute(sa.text("insert into probe values (1)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("select id from probe")).scalar_one() == 1
    finally:
        engine.dispose()


def test_created_databases_are_isolated_and_dropped(postgres_url: str) -> None:
    """Tables in one created database are invisible in another; drop removes it."""
    a = create_database(postgres_url, "iso_a")
    b = create_database(postgres_url, "iso_b")
    engines = [sa.create_engine(a), sa.create_engine(b)]
    try:
        with engines[0].begin() as conn:
            conn.execute(sa.text("create table only_in_a (x int)"))
        with engines[1].connect() as conn:
            found = conn.execute(sa.text("select to_regclass('only_in_a')")).scalar_one()
            assert found is None
    finally:
        for engine in engines:
            engine.dispose()
        drop_database(postgres_url, "iso_a")
        drop_database(postgres_url, "iso_b")
    admin = sa.create_engine(postgres_url)
    try:
        with admin.connect() as conn:
            names = set(conn.execute(sa.text("select datname from pg_database")).scalars())
        assert {"iso_a", "iso_b"}.isdisjoint(names)
    finally:
        admin.dispose()


def test_bad_database_names_are_refused(postgres_url: str) -> None:
    """Names that are not plain identifiers never reach SQL."""
    with pytest.raises(ValueError, match="bad database name"):
        create_database(postgres_url, 'x"; drop database postgres; --')
