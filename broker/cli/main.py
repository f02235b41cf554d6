"""The ``hoshu`` command line: one entry point, one module per area.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which
adds its sub-commands; each sub-command sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES: list[str] = [
    "broker.cli.ssh",
    "broker.cli.audit",
    "broker.cli.people",
    "broker.cli.requests",
    "broker.cli.admin",
    "broker.cli.serve",
    "broker.cli.holds",
    # "broker.cli.<area>" modules are appended here as areas land
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoshu",
        description="hoshu: secure remote maintenance for laboratory instruments",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
