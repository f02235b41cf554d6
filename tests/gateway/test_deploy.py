"""The shipped systemd unit runs the real CLI, hardened."""

from __future__ import annotations

import configparser
from pathlib import Path

from gateway.cli import build_parser

UNIT = Path(__file__).parents[2] / "deploy" / "hoshu-gateway.service"


def test_the_systemd_unit_is_hardened_and_runs_the_gateway() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    svc = unit["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "User": "hoshu-gateway",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
    }.items():
        assert svc.get(key) == value, key
    assert "AF_PACKET" not in svc["RestrictAddressFamilies"]
    argv = svc["ExecStart"].split()
    assert argv[0].endswith("/hoshu-gateway")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/hoshu/gateway.toml"
