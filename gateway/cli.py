"""The ``hoshu-gateway`` command line.

    hoshu-gateway [--config PATH] enroll --token TOKEN
    hoshu-gateway [--config PATH] run
    hoshu-gateway [--config PATH] pause [--by NAME]
    hoshu-gateway [--config PATH] resume [--by NAME]
    hoshu-gateway [--config PATH] status [--json]
    hoshu-gateway [--config PATH] verify-audit [--log PATH]

The configuration defaults to ``$HOSHU_GATEWAY_CONFIG`` or
``/etc/hoshu/gateway.toml``.  Exit status: 0 success, 1 refused or failed
(message on stderr), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from gateway import __version__
from gateway.errors import ConfigError, ControlError, GatewayError, NotEnrolled

DEFAULT_CONFIG = "/etc/hoshu/gateway.toml"
log = logging.getLogger(__name__)


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("HOSHU_GATEWAY_CONFIG") or DEFAULT_CONFIG)


def _load(args: argparse.Namespace) -> Any:
    from gateway.config import load_config

    return load_config(_config_path(args))


def cmd_enroll(args: argparse.Namespace) -> int:
    from gateway.enroll import enroll

    config = _load(args)
    token = args.token or os.environ.get("HOSHU_ENROLL_TOKEN", "")
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    if not token:
        print(
            "hoshu-gateway enroll: give --token, --token-file or HOSHU_ENROLL_TOKEN",
            file=sys.stderr,
        )
        return 2
    e = enroll(config, token, version=__version__)
    print(
        f"enrolled as gateway {e.gateway_id} of {e.hospital}; "
        f"tunnel {e.tunnel_host}:{e.tunnel_port}; broker key pinned"
    )
    return 0


async def _run(config: Any) -> int:
    from gateway.agent import GatewayAgent
    from gateway.auditlog import LocalAudit
    from gateway.control import ControlServer
    from gateway.enroll import load_enrollment

    enrollment, key = load_enrollment(config)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    audit = LocalAudit(
        config.audit_path,
        gateway_name=config.name,
        version=__version__,
        clock=lambda: datetime.now(UTC),
        gateway_id=enrollment.gateway_id,
        hospital_id=enrollment.hospital_id,
    )
    agent = GatewayAgent(config, enrollment, key, audit)
    control = ControlServer(config.control_socket, agent.handle_control)
    if sys.platform != "win32":
        await control.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
    log.info(
        "hoshu-gateway %s starting (%s mode, %d instrument(s))",
        __version__,
        config.mode,
        len(config.instruments),
    )
    try:
        await agent.run()
    finally:
        await control.close()
        audit.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    return asyncio.run(_run(config))


def _switch(args: argparse.Namespace, cmd: str) -> int:
    from gateway.control import request, state_now, write_state

    config = _load(args)
    by = args.by or getpass.getuser()
    try:
        answer = request(config.control_socket, cmd, by)
    except ControlError as exc:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_state(
            config.state_path, state_now(cmd == "pause", by, datetime.now(UTC), pending=True)
        )
        print(f"{exc}; {cmd} written to {config.state_path} (applied when it starts or notices)")
        return 0
    print(f"{cmd}d: state {answer.get('state')}")
    return 0 if answer.get("ok") else 1


def _print_status(s: dict[str, Any]) -> None:
    print(f"state:      {s.get('state')}{'  (PAUSED)' if s.get('paused') else ''}")
    if s.get("paused"):
        print(f"paused:     since {s.get('paused_since')} by {s.get('paused_by')}")
    print(f"mode:       {s.get('mode')}")
    print(f"broker:     {s.get('broker')} (gateway {s.get('gateway_id')})")
    print(f"connected:  {s.get('connected_since') or '-'}")
    tunnels = s.get("tunnels") or []
    if len(tunnels) > 1:  # several broker replicas ([broker] addresses)
        replicas = s.get("replicas") or []
        print(
            f"tunnels:    {s.get('tunnels_up')} of {len(tunnels)} up"
            f"{f' on {len(replicas)} replica(s)' if replicas else ''} (min_tunnels "
            f"{s.get('min_tunnels')}){'  DEGRADED' if s.get('degraded') else ''}"
        )
        for t in tunnels:
            why = f" ({t['last_error']})" if t.get("last_error") else ""
            on = f" on replica {t['replica']}" if t.get("replica") else ""
            print(f"  {t['broker']}: {t['state']}{on}{why}")
    print(f"last error: {s.get('last_error') or '-'}")
    if s.get("clock_offset_s") is not None:
        print(f"clock:      {s['clock_offset_s']:+.1f} s against the broker")
    print(f"unsent audit events: {s.get('unacked_events')}")
    channels = s.get("channels") or []
    print(f"open channels: {len(channels)}")
    for c in channels:
        print(
            f"  {c['channel']}: {c['instrument']}:{c['port']} for {c['engineer'] or '?'} "
            f"(session {c['session'] or '?'}) since {c['since']}"
        )
    for w in s.get("windows") or []:
        print(f"window: {w['start']} .. {w['end']}")


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.control import read_state, request

    config = _load(args)
    try:
        s = request(config.control_socket, "status", getpass.getuser())
    except ControlError as exc:
        st = read_state(config.state_path)
        s = {
            "ok": False,
            "state": "not running",
            "paused": st.paused,
            "paused_since": st.since,
            "paused_by": st.by,
            "mode": str(config.mode),
            "last_error": st.error or str(exc),
        }
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        _print_status(s)
    return 0


def cmd_verify_audit(args: argparse.Namespace) -> int:
    from audit.chain import verify

    path = Path(args.log) if args.log else _load(args).audit_path
    if not path.exists():
        print(f"{path}: no audit log", file=sys.stderr)
        return 1
    result = verify(path)
    if result.ok:
        print(f"{path}: OK, {result.count} events, last hash {result.last_hash}")
        return 0
    print(f"{path}: TAMPERED at line {result.first_bad}: {result.reason}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hoshu-gateway", description="hoshu hospital gateway (outbound-only connector)"
    )
    p.add_argument("--config", help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--version", action="version", version=f"hoshu-gateway {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    e = sub.add_parser("enroll", help="register this gateway's key with the broker")
    e.add_argument("--token", help="one-time enrolment token from the broker admin")
    e.add_argument("--token-file", help="read the token from this file")
    e.set_defaults(func=cmd_enroll)
    sub.add_parser("run", help="run the gateway (foreground)").set_defaults(func=cmd_run)
    for name, text in (
        ("pause", "kill switch: close the tunnel and every channel"),
        ("resume", "release the kill switch"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--by", help="who pulls the switch (default: your user name)")
        sp.set_defaults(func=lambda a, n=name: _switch(a, n))
    st = sub.add_parser("status", help="connection state, open channels, last error")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    v = sub.add_parser("verify-audit", help="check the local hash-chained audit copy")
    v.add_argument("--log", help="log file (default: the configured audit log)")
    v.set_defaults(func=cmd_verify_audit)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = func(args)
    except ConfigError as exc:
        print(f"hoshu-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except NotEnrolled as exc:
        print(f"hoshu-gateway: {exc}", file=sys.stderr)
        return 2
    except (GatewayError, AuditError) as exc:
        print(f"hoshu-gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
