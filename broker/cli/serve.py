"""``hoshu serve`` (the broker process) and ``hoshu db upgrade``.

The process itself is assembled by :func:`broker.assembly.build_broker`;
heavy imports happen only when a command runs, so ``hoshu --help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli.client import CliError, run
from broker.cli.output import done

if TYPE_CHECKING:
    from broker.settings import BrokerSettings


def _settings(args: argparse.Namespace) -> BrokerSettings:
    """The environment's settings; an unknown ``HOSHU_*`` variable or a bad value
    stops the command here, named (exit 1)."""
    from broker.settings import BrokerSettings

    try:
        settings = BrokerSettings.from_env()
    except ValueError as exc:  # UnknownSettingError, pydantic's ValidationError
        raise CliError(f"broker settings: {exc}") from exc
    updates: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        updates["data_dir"] = Path(args.data_dir)
    if getattr(args, "host", None):
        updates["api_host"] = args.host
    if getattr(args, "port", None) is not None:
        updates["api_port"] = args.port
    return settings.model_copy(update=updates) if updates else settings


def configure_logging(settings: BrokerSettings) -> None:
    """The broker's log: INFO and above, level and logger named on every line."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # the Azure SDKs log every request's headers at INFO (tokens redacted): keep warnings
    logging.getLogger("azure").setLevel(logging.WARNING)
    # asyncssh logs several INFO lines per connection and per channel (opened, closed,
    # addresses): a cost on every session and noise in the log; HOSHU_SSH_LOG_LEVEL
    # brings them back for debugging
    logging.getLogger("asyncssh").setLevel(settings.ssh_log_level.upper())


@run
def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)  # before the heavy imports: a bad setting fails at once
    from audit.recstore import StoreUnavailable
    from broker.assembly import build_broker
    from broker.keys import KeyStoreError
    from broker.runtime import BrokerStopped, run_serve

    configure_logging(settings)
    try:
        rt = build_broker(settings)
    except (StoreUnavailable, KeyStoreError) as exc:  # recording or key store: one line
        raise CliError(str(exc)) from exc
    try:
        run_serve(rt)
    except BrokerStopped as exc:  # logged with its cause where it happened
        raise CliError(f"{exc}; see the log above") from exc
    return 0


@run
def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from broker.identity import database_password
    from broker.store.db import current_revision, make_engine, upgrade

    settings = _settings(args)
    try:
        engine = make_engine(settings.db_url, password=database_password(settings))
        upgrade(engine)
        rev = current_revision(engine)
        engine.dispose()
    except Exception as exc:
        raise CliError(f"cannot upgrade the database: {exc}") from exc
    done(args, {"revision": rev}, f"Database at revision {rev}.")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the broker (control plane API)")
    p.add_argument("--host", help="listen address (env HOSHU_API_HOST)")
    p.add_argument("--port", type=int, help="listen port (env HOSHU_API_PORT)")
    p.add_argument("--data-dir", help="data directory (env HOSHU_DATA_DIR)")
    p.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database maintenance")
    dbs = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    p = dbs.add_parser("upgrade", help="apply the schema migrations")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_db_upgrade)
