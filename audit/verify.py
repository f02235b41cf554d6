"""Checking a hash-chained log (:mod:`audit.chain`) line by line.

Each line carries ``ChainSeq`` (its position, from 1) and ``ChainHash`` =
SHA-256 over the previous line's hash and the canonical JSON of the record
without ``ChainHash``.  Anyone can recompute those hashes, so the chain alone
only proves that the file is *self-consistent*.  What makes a rewrite show is
the signed checkpoints (Ed25519, the broker's audit key): a rewritten log must
drop the checkpoints it cannot sign again, or carry checkpoints signed by
another key.

What :func:`verify` proves, by argument:

* always: every line's position and hash (an edit, deletion, insertion or
  reordering names its position), every ``audit.checkpoint`` event matches
  the chain before it, and the ``.head`` file beside the log (a cut tail);
* ``keys``: every checkpoint (in the log, beside it, from a SIEM) is signed by
  a trusted key.  Without trusted keys a checkpoint proves nothing;
* ``checkpoint_every``: there is a checkpoint at least every N events, so
  checkpoints cannot simply be removed;
* ``closed``: the log ends with a checkpoint (the writer writes one when it
  closes); ``closed=False`` accepts an unsigned tail of fewer than
  ``checkpoint_every`` events (a log that is still being written);
* ``sidecar``: the ``.checkpoint`` file beside the log exists once the log has
  checkpoints and matches the chain at its position;
* ``checkpoints``: checkpoints held elsewhere (the copies a SIEM received) --
  the log must reach each one's position with the same hash, otherwise it was
  truncated or rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import ChainError
from audit.events import AuditEvent
from audit.signing import Checkpoint, TrustedKeys

GENESIS = "0" * 64


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link_hash(prev: str, body: bytes) -> str:
    """SHA-256 over the previous hash and a record's canonical JSON (without
    ``ChainHash``): the one definition every store (file, PostgreSQL) and every
    check uses."""
    return hashlib.sha256(prev.encode() + b"\n" + body).hexdigest()


def chain_hash(prev: str, record: dict[str, Any]) -> str:
    """The hash committing to ``record`` (without ``ChainHash``) and all before it."""
    return link_hash(prev, canonical({k: v for k, v in record.items() if k != "ChainHash"}))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    last_hash: str
    first_bad: int | None = None  # 1-based line position of the first bad line
    reason: str = ""
    checkpoints: int = 0  # checkpoint events found (and checked) in the log
    signatures_checked: bool = False
    last_checkpoint: Checkpoint | None = None
    unsigned_tail: int = 0  # events after the last checkpoint
    external_checkpoints: int = 0  # checkpoints held elsewhere that were matched


def read_events(path: str | os.PathLike[str]) -> Iterator[AuditEvent]:
    """Yield the events of a log (no verification)."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield AuditEvent(json.loads(line))


def read_head(p: Path) -> tuple[int, str] | None:
    head_path = p.with_name(p.name + ".head")
    if not head_path.exists():
        return None
    n, _, h = head_path.read_text().strip().partition(" ")
    try:
        return (int(n), h) if n else None
    except ValueError:
        return (-1, "unreadable head file")


def read_sidecar(p: Path) -> Checkpoint | None:
    """The newest checkpoint as the writer left it beside the log (None if absent)."""
    path = p.with_name(p.name + ".checkpoint")
    try:
        return Checkpoint.from_details(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ChainError(f"{path} is not a checkpoint: {exc}") from exc


def checkpoints_from_lines(lines: Iterable[str]) -> list[Checkpoint]:
    """The ``audit.checkpoint`` events in a SIEM's copy of the log.

    Accepts JSON Lines (Fluentd ``out_file``, a Sentinel/Log Analytics export, a
    ``hoshu audit export --format jsonl``), raw syslog lines whose message is
    the event's JSON (what rsyslog stores), and bare checkpoint objects.
    ``Details`` may be an object or a JSON string (Log Analytics ``dynamic``).
    """
    found: list[Checkpoint] = []
    decoder = json.JSONDecoder()
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            record, _ = decoder.raw_decode(line, start)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("EventType") == "audit.checkpoint":
            details = record.get("Details")
            if isinstance(details, str):
                details = json.loads(details)
            found.append(Checkpoint.from_details(details or {}))
        elif {"seq", "hash", "signature", "key_id"} <= set(record):
            found.append(Checkpoint.from_details(record))
    return found


def verify(
    path: str | os.PathLike[str],
    *,
    head: tuple[int, str] | None = None,
    keys: TrustedKeys | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    upto: int | None = None,
    checkpoint_every: int | None = None,
    closed: bool = False,
    sidecar: bool = False,
) -> VerifyResult:
    """Check every line of the log; name the first bad position (see the module doc).

    ``head`` (position, hash) is what the log must reach; by default the
    ``.head`` file beside the log is used.  ``upto`` stops at that position
    (a log being written).  The defaults are what the writer itself checks when
    it reopens a log; an auditor's check passes ``keys``, ``checkpoint_every``,
    ``closed`` and ``sidecar`` as ``hoshu audit verify`` does.
    """
    p = Path(path)
    # both are written after the lines they describe: read them first, so a writer
    # appending meanwhile cannot make them look ahead of the log
    if head is None and upto is None:
        head = read_head(p)
    try:
        side = read_sidecar(p) if sidecar else None
    except ChainError as exc:
        return VerifyResult(False, 0, GENESIS, 1, str(exc))
    outside = [*checkpoints, *([checkpoint] if checkpoint is not None else [])]
    with open(p, "rb") if p.exists() else contextlib.nullcontext(()) as lines:
        return verify_lines(
            lines,
            head=head,
            keys=keys,
            checkpoints=outside,
            upto=upto,
            checkpoint_every=checkpoint_every,
            closed=closed,
            side=side,
            side_required=sidecar,
            side_name="the .checkpoint file",
        )


def verify_lines(
    lines: Iterable[bytes],
    *,
    head: tuple[int, str] | None,
    keys: TrustedKeys | None,
    checkpoints: Sequence[Checkpoint] = (),
    upto: int | None = None,
    checkpoint_every: int | None = None,
    closed: bool = False,
    side: Checkpoint | None = None,
    side_required: bool = False,
    side_name: str = "the stored newest checkpoint",  # as the reasons name it
) -> VerifyResult:
    """The rules of :func:`verify` over a chain's lines in order, wherever they are
    stored (a file, PostgreSQL rows): ``head`` is the position and hash the chain
    must reach, ``side`` the newest checkpoint its writer kept apart from it."""
    prev, seq, cps, since = GENESIS, 0, 0, 0
    last_cp: Checkpoint | None = None
    outside = list(checkpoints)
    if side is not None:
        outside.append(side)
    wanted = {cp.seq for cp in outside}
    seen: dict[int, str] = {}

    def bad(pos: int, reason: str) -> VerifyResult:
        return VerifyResult(False, seq, prev, pos, reason, cps, keys is not None, last_cp, since)

    for cp in outside:
        if keys is not None and (why := keys.check(cp)):
            what = f"{side_name}'s" if cp is side else "the given"
            return bad(cp.seq, f"{what} {why}")
    for lineno, line in enumerate(lines, start=1):
        if upto is not None and lineno > upto:
            break
        if not line.endswith(b"\n"):
            break  # the writer is in the middle of this line
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            return bad(lineno, f"line {lineno} is not a record")
        if record.get("ChainSeq") != lineno:
            return bad(
                lineno,
                f"line {lineno} has position {record.get('ChainSeq')}: "
                "an event was deleted, inserted or moved",
            )
        if record.get("ChainHash") != chain_hash(prev, record):
            return bad(
                lineno, f"line {lineno} does not match its hash: edited, inserted or reordered"
            )
        if record.get("EventType") == "audit.checkpoint":
            try:
                cp = Checkpoint.from_details(record.get("Details") or {})
            except ChainError as exc:
                return bad(lineno, f"line {lineno}: {exc}")
            if cp.seq != lineno - 1 or cp.hash != prev:
                return bad(
                    lineno, f"checkpoint at line {lineno} does not match the chain before it"
                )
            if keys is not None and (why := keys.check(cp)):
                return bad(lineno, f"line {lineno}: {why}")
            cps, last_cp, since = cps + 1, cp, 0
        elif checkpoint_every is not None and since >= checkpoint_every:
            return bad(
                lineno,
                f"no signed checkpoint within {checkpoint_every} events "
                f"after position {lineno - since - 1}: checkpoints were "
                "removed or the log was rewritten",
            )
        else:
            since += 1
        prev, seq = record["ChainHash"], lineno
        if lineno in wanted:
            seen[lineno] = prev
    for cp in sorted(outside, key=lambda c: c.seq):
        if seq < cp.seq:
            return bad(
                seq + 1,
                f"the log ends at position {seq} but a signed checkpoint "
                f"covers position {cp.seq}: the tail was truncated",
            )
        if seen.get(cp.seq) != cp.hash:
            return bad(
                cp.seq,
                f"position {cp.seq} does not match the signed checkpoint: the log was rewritten",
            )
    if side_required and side is None and cps:
        return bad(seq + 1, f"{side_name} beside the chain is missing")
    if upto is not None and seq < upto:
        return bad(seq + 1, f"the log ends at position {seq}, expected {upto}")
    if head is not None:
        if head[0] < 0:
            return bad(seq + 1, "the .head file beside the log is unreadable")
        if seq < head[0]:
            return bad(
                seq + 1,
                f"the log ends at position {seq} but was written up to "
                f"{head[0]}: the tail was truncated",
            )
        if seq == head[0] and prev != head[1]:
            return bad(seq, f"position {seq} does not match the head")
    if closed and since:
        return bad(
            seq - since + 1,
            f"the last {since} events are not covered by a signed "
            "checkpoint (the log was not closed, or its last "
            "checkpoints were removed)",
        )
    return VerifyResult(
        True,
        seq,
        prev,
        None,
        "",
        cps,
        keys is not None,
        last_cp,
        since,
        len(outside) - (side is not None),
    )
