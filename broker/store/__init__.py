"""Storage: tables, the generic repository, migrations, and the directory.

SQLite (WAL, the embedded default) or PostgreSQL by URL; see :mod:`broker.store.db`.
"""
