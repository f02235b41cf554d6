"""``hoshu audit verify`` and ``hoshu audit compliance``: run on the broker host,
reading its files and settings (no API).

verify: the hash chain, the signed checkpoints (every ``checkpoint_every``
events and at the end, signed by a *pinned* key or the Key Vault's, never one
kept beside the log), the SIEM's copies of the checkpoints, and optionally the
auditors' index against the chain; the file log and, with the PostgreSQL audit
store, every replica's chain in it.  Exit 0 only when everything asked for was checked and
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

from audit.chain import VerifyResult, read_events, verify
from audit.errors import AuditError
from audit.signing import Checkpoint, TrustedKeys
from audit.verify import checkpoints_from_lines


def _settings() -> Any:
    from broker.settings import BrokerSettings

    return BrokerSettings()


def _pinned_pems(args: argparse.Namespace, log: Path | None, data_dir: Path | None) -> list[bytes]:
    """The pinned public keys; never one kept beside the log it is meant to check.

    Whoever can rewrite the log can rewrite a key file next to it (and sign
    their own checkpoints), so a key from the log's folder, or from the broker
    data directory the log (or, with the PostgreSQL store, the file key store)
    lives in, is refused.
    """
    near = []
    if log is not None:
        near.append(log.resolve().parent)
    if data_dir is not None and (log is None or log.resolve().is_relative_to(data_dir.resolve())):
        near.append(data_dir.resolve())
    pems = []
    for key in args.key:
        where = Path(key).resolve()
        if any(where.is_relative_to(d) for d in near):
            raise _Usage(
                f"{key} is kept beside the log it should check; pass the public "
                "key pinned when the broker was set up (docs/auditor.md)"
            )
        try:
            pems.append(where.read_bytes()[: 64 * 1024])
        except OSError as exc:
            raise _Usage(f"cannot read public key {key}: {exc.strerror}") from exc
    return pems


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
            raise _Usage(
                f"{name} holds no audit.checkpoint events (is it the SIEM's copy of this log?)"
            )
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
    return {
        "ok": check.ok,
        "compared": check.compared,
        "indexed_upto": check.upto,
        "retired": check.retired,
        "problems": list(check.problems),
    }


def _key_store_pems(settings: Any) -> list[bytes]:
    """Every version of the audit signing key, from Key Vault: kept apart from the
    chains it checks.  The file key store is the broker's data directory, beside the
    log, so it is refused like a key file from there."""
    if settings is None or not settings.key_vault_url:
        raise _Usage(
            "--key-store needs the broker's Key Vault (HOSHU_KEY_VAULT_URL); the "
            "key files in the data directory sit beside the log: pass "
            "--trusted-key with the pinned public key"
        )
    from broker.keys import KeyStoreError, open_key_store

    try:
        store = open_key_store(settings)
        try:
            return [pem for _, pem in store.signing_public_pems()]
        finally:
            store.close()
    except KeyStoreError as exc:
        raise _Usage(f"cannot read the signing keys from the key store: {exc}") from exc


def _keys(args: argparse.Namespace, log: Path | None, settings: Any) -> TrustedKeys | None:
    """Checkpoint keys to trust: pinned files (``--trusted-key``) and/or the Key Vault
    (``--key-store``); None when neither is given (signatures are not checked)."""
    if not args.key and not args.key_store:
        return None
    pems = _pinned_pems(args, log, settings.data_dir if settings else None)
    if args.key_store:
        pems += _key_store_pems(settings)
    return TrustedKeys.from_pems(pems)


def _summary(name: str, result: VerifyResult, no_signatures: bool) -> dict[str, Any]:
    ok = result.ok and (result.signatures_checked or no_signatures)
    report: dict[str, Any] = {
        "ok": ok,
        "log": name,
        "events": result.count,
        "checkpoints": result.checkpoints,
        "signatures_checked": result.signatures_checked,
        "checkpoints_from_elsewhere": result.external_checkpoints,
        "unsigned_tail": result.unsigned_tail,
        "first_bad_position": result.first_bad,
        "reason": result.reason,
        "last_hash": result.last_hash,
    }
    if result.ok and not ok:
        report["reason"] = (
            "signatures were not checked: pass --trusted-key with the pinned "
            "public key (or --no-signatures to check the hash chain only)"
        )
    return report


def _verify_store(
    args: argparse.Namespace,
    url: str,
    keys: TrustedKeys | None,
    outside: list[Checkpoint],
    every: int,
) -> list[dict[str, Any]]:
    """Every chain in the PostgreSQL audit store (one per replica that ever wrote)."""
    from sqlalchemy import select

    from audit.pgchain import chain_events_table, chain_ids, store_engine, verify_chain

    engine = store_engine(url)
    try:
        ids = chain_ids(engine)
        if not ids:
            raise _Usage("the audit store holds no chain (is this the broker's database?)")
        given: dict[str, list[Checkpoint]] = {i: [] for i in ids}
        stray: list[Checkpoint] = []
        t = chain_events_table.c
        with engine.connect() as conn:
            for cp in outside:  # a SIEM's checkpoint belongs to the chain holding its hash
                owner = conn.scalar(
                    select(t.chain_id).where(t.seq == cp.seq, t.hash == cp.hash).limit(1)
                )
                (given[owner] if owner in given else stray).append(cp)
        out = []
        for chain in ids:
            result = verify_chain(
                engine,
                chain,
                keys=keys,
                checkpoints=given[chain],
                checkpoint_every=every,
                closed=not args.allow_open_tail,
            )
            out.append(_summary(f"postgres:{chain}", result, args.no_signatures))
        for cp in stray:
            out.append(
                {
                    "ok": False,
                    "log": "postgres",
                    "events": 0,
                    "checkpoints": 0,
                    "signatures_checked": keys is not None,
                    "checkpoints_from_elsewhere": 0,
                    "unsigned_tail": 0,
                    "first_bad_position": cp.seq,
                    "last_hash": "",
                    "reason": f"a signed checkpoint at position {cp.seq} matches no chain "
                    "in the store: a chain was truncated or rewritten",
                }
            )
        return out
    finally:
        engine.dispose()


def _print(r: dict[str, Any], no_signatures: bool, named: bool) -> None:
    where = f"{r['log']}: " if named else ""
    if not r["ok"] and r["first_bad_position"] is not None:
        print(f"{where}TAMPERED: first bad position {r['first_bad_position']}: {r['reason']}")
        return
    sig = "signatures checked" if r["signatures_checked"] else "signatures NOT checked"
    tail = f", {r['unsigned_tail']} events not yet signed" if r["unsigned_tail"] else ""
    print(
        f"{where}{'OK' if r['ok'] else 'NOT VERIFIED'}: {r['events']} events, "
        f"{r['checkpoints']} checkpoints ({sig}), "
        f"{r['checkpoints_from_elsewhere']} checkpoints from elsewhere matched{tail}, "
        f"last hash {r['last_hash'][:16]}…"
    )
    if not r["signatures_checked"] and not no_signatures:
        print(f"  {r['reason']}")


def cmd_verify(args: argparse.Namespace) -> int:
    """The file log (``--log``, or the broker's when it keeps one) and, with the
    PostgreSQL store (``--store URL`` or the broker's settings), every chain in it."""
    try:
        settings: Any = _settings()
    except ValueError:  # settings from the environment are not required for --log/--store
        settings = None
    if not args.log and not args.store and settings is None:
        print("error: the broker settings are invalid; pass --log or --store", file=sys.stderr)
        return 2
    in_db = bool(args.store) or (not args.log and settings.audit_store == "postgres")
    log: Path | None = Path(args.log) if args.log else None
    if log is None and settings is not None and not args.store:
        log = settings.audit_log_path
        if in_db and not log.exists():
            log = None  # this broker keeps its chain in the database only
    every = args.checkpoint_every or (settings.audit_checkpoint_every if settings else 1000)
    try:
        keys = _keys(args, log, settings)
        outside = _outside_checkpoints(args)
    except (_Usage, AuditError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reports: list[dict[str, Any]] = []
    if log is not None:
        if not log.exists():
            print(f"error: no audit log at {log}", file=sys.stderr)
            return 1
        result = verify(
            log,
            keys=keys,
            checkpoints=[] if in_db else outside,
            checkpoint_every=every,
            closed=not args.allow_open_tail,
            sidecar=True,
        )
        reports.append(_summary(str(log), result, args.no_signatures))
    if in_db:
        url = args.store or settings.audit_store_url or settings.db_url
        try:
            reports += _verify_store(args, url, keys, outside, every)
        except _Usage as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except AuditError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    report: dict[str, Any] = (
        dict(reports[0])
        if len(reports) == 1
        else {"ok": all(r["ok"] for r in reports), "chains": reports}
    )
    ok = bool(report["ok"])
    if args.index is not None and ok and log is not None and not in_db:
        try:
            report["index"] = _index_check(args, log, settings)
        except (_Usage, AuditError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report["ok"] = ok = ok and report["index"]["ok"]
    if args.json:
        print(json.dumps(report))
        return 0 if ok else 1
    for r in reports:
        _print(r, args.no_signatures, named=len(reports) > 1)
    index = report.get("index")
    if index is not None:
        state = "matches the chain" if index["ok"] else "DOES NOT match the chain"
        print(
            f"  index {state}: {index['compared']} events compared up to position "
            f"{index['indexed_upto']}, {index['retired']} removed by retention"
        )
        for problem in index["problems"]:
            print(f"    {problem}")
    return 0 if ok else 1


def _gateway_modes(index_url: str) -> dict[str, str] | None:
    """Each gateway's tunnel mode, from its newest ``gateway.connected`` event."""
    from sqlalchemy.exc import SQLAlchemyError

    from audit.index import AuditIndex, EventQuery

    if index_url.startswith("sqlite:///") and not Path(index_url[len("sqlite:///") :]).exists():
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
        storage=f"local files under {settings.data_dir}",
        test_results=results,
    )
    fmt = "json" if args.json else args.format
    render = {"json": render_json, "md": render_markdown, "text": render_text}[fmt]
    print(render(deployment, lang=args.lang))
    return 0


# --- registration -----------------------------------------------------------------


def add_verify_parser(sub: Any) -> None:
    p = sub.add_parser("verify", help="check the hash chain and signed checkpoints")
    p.add_argument("--log", help="audit log (default: the broker's)")
    p.add_argument(
        "--trusted-key",
        "--key",
        "--public-key",
        dest="key",
        action="append",
        default=[],
        metavar="FILE",
        help="pinned public key PEM of the broker's audit key (repeatable; every "
        "version after a rotation); never one from the log's folder",
    )
    p.add_argument(
        "--key-store",
        action="store_true",
        help="trust the signing key versions in the broker's Key Vault",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="also check every chain in this PostgreSQL audit store (default "
        "with HOSHU_AUDIT_STORE=postgres: the broker's)",
    )
    p.add_argument(
        "--no-signatures",
        action="store_true",
        help="check the hash chain only (exit 0 without signatures checked)",
    )
    p.add_argument("--checkpoint", help="a checkpoint from the SIEM (JSON or file)")
    p.add_argument(
        "--checkpoint-from",
        action="append",
        metavar="FILE",
        help="the SIEM's copy of the log (JSON Lines or raw syslog lines): "
        "every audit.checkpoint in it must match (repeatable)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        help="longest stretch without a checkpoint (default: the broker setting)",
    )
    p.add_argument(
        "--allow-open-tail",
        action="store_true",
        help="a live log: accept fewer than checkpoint-every unsigned events at the end",
    )
    p.add_argument(
        "--index",
        nargs="?",
        const="",
        metavar="URL",
        help="also compare the auditors' index with the chain (default URL: "
        "the broker's index database)",
    )
    p.set_defaults(func=cmd_verify)


def add_compliance_parser(sub: Any) -> None:
    p = sub.add_parser("compliance", help="this deployment's status per control, and why")
    p.add_argument("--format", choices=("text", "md", "json"), default="text")
    p.add_argument("--lang", choices=("ja", "en"), default="en")
    p.add_argument(
        "--tests",
        metavar="JUNIT.xml",
        help="results of a test run (pytest --junit-xml): cited tests that failed "
        "or did not run lower a control's status",
    )
    p.set_defaults(func=cmd_compliance)
