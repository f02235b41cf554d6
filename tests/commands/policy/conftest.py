"""The control plane's fixtures (a seeded store and services) for the command-rule tests."""

from tests.control.conftest import (  # noqa: F401  (fixtures)
    clock,
    db_url,
    emitter,
    pg_control_url,
    services,
    sqlite_template,
    store,
    world,
)
