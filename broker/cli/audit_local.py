"""``hoshu audit verify`` and ``hoshu audit compliance``: run on the broker host,
reading its files and settings (no API).

verify: the hash chain, the signed checkpoints (every ``checkpoint_every``
events and at the end, signed by a *pinned* key, never one kept beside the
log), the SIEM's copies of the checkpoints, and optionally the auditors' index
against the chain.  Exit 0 only when everything asked for was checked and
holds; 1 when something does not hold or the signatures were not checked; 2
when an option is unusable.

compliance: each control's status for this deployment (docs/compliance.md is
the same rendering for the default configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from audit.chain import read_events, verify
from audit.errors import AuditError
from audit.signing import Checkpoint, TrustedKeys
from audit.verify import checkpoints_from_lines


def _settings() -> Any:
    from broker.settings import BrokerSettings

    return BrokerSettings()


def _trusted_keys(args: argparse.Namespace, log: Path, data_dir: Path | None) -> TrustedKeys:
    """The pinned public keys; never one kept beside the log it is meant to check.

    Whoever can rewrite the log can rewrite a key file next to it (and sign
    their own checkpoints), so a key from the log's folder, or from the broker
    data directory the log lives in, is refused.
    """
    near = [log.resolve().parent]
    if data_dir is not None and log.resolve().is_relative_to(data_dir.resolve()):
        near.append(data_dir.resolve())
    for key in args.key:
        where = Path(key).resolve()
        if any(where.is_relative_to(d) for d in near):
            raise _Usage(f"{key} is kept beside the log it should check; pass the public "
                         "key pinned when the broker was set up (docs/auditor.md)")
    return TrustedKeys.from_pem_files(args.key)


class _Usage(Exception):
    """A verify option is unusable (exit 2)."""


def _outside_checkpoints(args: argparse.Namespace) -> list[Checkpoint]:
    found: list[Checkpoint] = []
    if args.checkpoint:
        text = args.checkpoint
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        raw = json.loads(text)
        found.append(Checkpoint.from_details(raw.get("Details", raw)))
    for name in args.checkpoint_from or []:
        with open(name, encoding="utf-8", errors="replace") as f:
            got = checkpoints_from_lines(f)
        if not got:
            raise _Usage(f"{name} holds no audit.checkpoint events (is it the SIEM's copy "
                         "of this log?)")
        found += got
    return found


def _index_check(args: argparse.Namespace, log: Path, settings: Any) -> dict[str, Any]:
    from audit.index import AuditIndex, check_index
    from audit.outbox import CursorStore, OutboxError

    url = args.index or (settings.audit_index_url or settings.db_url if settings else "")
    if not url:
        raise _Usage("--index needs a database URL when the broker settings are not available")
    upto = None
    cursors = log.parent / "cursors"  # the broker keeps the shippers' cursors beside the log
    if (cursors / "index.cursor").exists():
        try:
            upto = CursorStore(cursors).load("index").seq or None
        except OutboxError:
            upto = None  # no trustworthy cursor: the newest indexed position is used
    index = AuditIndex.from_url(url)
    try:
        check = check_index(index, (e.record for e in read_events(log)), indexed_upto=upto)
    finally:
        index.engine.dispose()
    return {"ok": check.ok, "compared": check.compared, "indexed_upto": check.upto,
            "retired": check.retired, "problems": list(check.problems)}


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        settings: Any = _settings()
    except ValueError:  # settings from the environment are not required for --log
        settings = None
    if not args.log and settings is None:
        print("error: the broker settings are invalid; pass --log", file=sys.stderr)
        return 2
    log = Path(args.log) if args.log else settings.audit_log_path
    every = args.checkpoint_every or (settings.audit_checkpoint_every if settings else 1000)
    try:
        keys = _trusted_keys(args, log, settings.data_dir if settings else None) \
            if args.key else None
        outside = _outside_checkpoints(args)
    except (_Usage, AuditError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not log.exists():
        print(f"error: no audit log at {log}", file=sys.stderr)
        return 1
    result = verify(log, keys=keys, checkpoints=outside, checkpoint_every=every,
                    closed=not args.allow_open_tail, sidecar=True)
    ok = result.ok and (result.signatures_checked or args.no_signatures)
    report: dict[str, Any] = {
        "ok": ok, "log": str(log), "events": result.count, "checkpoints": result.checkpoints,
        "signatures_checked": result.signatures_checked,
        "checkpoints_from_elsewhere": result.external_checkpoints,
        "unsigned_tail": result.unsigned_tail, "first_bad_position": result.first_bad,
        "reason": result.reason, "last_hash": result.last_hash}
    if result.ok and not report["ok"]:
        report["reason"] = ("signatures were not checked: pass --key with the pinned public "
                            "key (or --no-signatures to check the hash chain only)")
    if args.index is not None and result.ok:
        try:
            report["index"] = _index_check(args, log, settings)
        except (_Usage, AuditError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report["ok"] = ok = ok and report["index"]["ok"]
    if args.json:
        print(json.dumps(report))
    elif not result.ok:
        print(f"TAMPERED: first bad position {result.first_bad}: {result.reason}")
    else:
        sig = "signatures checked" if result.signatures_checked else "signatures NOT checked"
        tail = f", {result.unsigned_tail} events not yet signed" if result.unsigned_tail else ""
        print(f"{'OK' if ok else 'NOT VERIFIED'}: {result.count} events, "
              f"{result.checkpoints} checkpoints ({sig}), "
              f"{result.external_checkpoints} checkpoints from elsewhere matched{tail}, "
              f"last hash {result.last_hash[:16]}…")
        if not result.signatures_checked and not args.no_signatures:
            print(f"  {report['reason']}")
        index = report.get("index")
        if index is not None:
            state = "matches the chain" if index["ok"] else "DOES NOT match the chain"
            print(f"  index {state}: {index['compared']} events compared up to position "
                  f"{index['indexed_upto']}, {index['retired']} removed by retention")
            for problem in index["problems"]:
                print(f"    {problem}")
    return 0 if ok else 1


def _gateway_modes(index_url: str) -> dict[str, str] | None:
    """Each gateway's tunnel mode, from its newest ``gateway.connected`` event."""
    from sqlalchemy.exc import SQLAlchemyError

    from audit.index import AuditIndex, EventQuery

    if index_url.startswith("sqlite:///") and not Path(index_url[len("sqlite:///"):]).exists():
        return None  # no broker database here: nothing is known about gateways
    try:
        index = AuditIndex.from_url(index_url)
    except SQLAlchemyError:
        return None
    modes: dict[str, str] = {}
    try:
        for e in index.iterate(EventQuery(types=("gateway.connected",), newest_first=True)):
            gw = str(e.get("GatewayId") or e.get("DvcHostname") or "?")
            modes.setdefault(gw, str((e.get("Details") or {}).get("mode") or "always"))
    except SQLAlchemyError:
        return None
    finally:
        index.engine.dispose()
    return modes


def cmd_compliance(args: argparse.Namespace) -> int:
    """This deployment's status per control, from the broker settings, the gateways'
    modes (their ``gateway.connected`` events) and, with ``--tests``, a test run."""
    from audit.compliance import Deployment, read_junit, render_json, render_markdown, render_text
    from broker.assembly import audit_config

    try:
        settings = _settings()
        config = audit_config(settings)
        results = read_junit(args.tests) if args.tests else None
    except (ValueError, SyntaxError, AuditError, OSError) as exc:  # SyntaxError: bad XML
        print(f"error: {exc}", file=sys.stderr)
        return 2
    deployment = Deployment(
        label=f"broker at {settings.data_dir}",
        sinks=tuple((c.name or c.kind, c.mask) for c in config.sinks),
        gateway_modes=_gateway_modes(config.index_url),
        events_retention_days=config.retention.events_days,
        recordings_retention_days=config.retention.recordings_days,
        storage=f"local files under {settings.data_dir}", test_results=results)
    fmt = "json" if args.json else args.format
    render = {"json": render_json, "md": render_markdown, "text": render_text}[fmt]
    print(render(deployment, lang=args.lang))
    return 0


# --- registration -----------------------------------------------------------------

def add_verify_parser(sub: Any) -> None:
    p = sub.add_parser("verify", help="check the hash chain and signed checkpoints")
    p.add_argument("--log", help="audit log (default: the broker's)")
    p.add_argument("--key", "--public-key", action="append", default=[],
                   help="pinned public key PEM of the broker's audit key (repeatable); "
                        "never one from the log's folder")
    p.add_argument("--no-signatures", action="store_true",
                   help="check the hash chain only (exit 0 without signatures checked)")
    p.add_argument("--checkpoint", help="a checkpoint from the SIEM (JSON or file)")
    p.add_argument("--checkpoint-from", action="append", metavar="FILE",
                   help="the SIEM's copy of the log (JSON Lines or raw syslog lines): "
                        "every audit.checkpoint in it must match (repeatable)")
    p.add_argument("--checkpoint-every", type=int,
                   help="longest stretch without a checkpoint (default: the broker setting)")
    p.add_argument("--allow-open-tail", action="store_true",
                   help="a live log: accept fewer than checkpoint-every unsigned events at "
                        "the end")
    p.add_argument("--index", nargs="?", const="", metavar="URL",
                   help="also compare the auditors' index with the chain (default URL: "
                        "the broker's index database)")
    p.set_defaults(func=cmd_verify)


def add_compliance_parser(sub: Any) -> None:
    p = sub.add_parser("compliance", help="this deployment's status per control, and why")
    p.add_argument("--format", choices=("text", "md", "json"), default="text")
    p.add_argument("--lang", choices=("ja", "en"), default="en")
    p.add_argument("--tests", metavar="JUNIT.xml",
                   help="results of a test run (pytest --junit-xml): cited tests that failed "
                        "or did not run lower a control's status")
    p.set_defaults(func=cmd_compliance)
