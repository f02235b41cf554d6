"""Events rendered ahead of sealing (the PostgreSQL chain's emitting threads) chain to
exactly the bytes the plain path writes, and an event that tries to carry the
position marker is sealed the plain way, never mis-spliced."""

from __future__ import annotations

from datetime import UTC, datetime

import audit.chain as chain_mod
from audit import new_event
from audit.chain import ChainState, Prepared, prepare
from audit.events import AuditEvent
from audit.signing import CheckpointSigner
from audit.verify import verify_lines

SIGNER = CheckpointSigner.generate()
EVENTS = [
    new_event("admin.change", ActorUsername="田中", EventMessage='quote " back \\ \u2028 \x01'),
    AuditEvent({"ChainHash": "forged", "ChainSeq": 77, "Details": {"ChainSeq": 0, "n": 2.5}}),
    AuditEvent({}),
    AuditEvent({"A": 1}),
    AuditEvent({"Z": [None, True]}),
    AuditEvent({"ChainSeqX": 1, "Chain": 2}),
    # the marker itself, as a value and as a key: must not be taken for the position
    AuditEvent({"A": chain_mod._MARK, "EventType": "x"}),
    AuditEvent({chain_mod._MARK: 1}),
]


def _state(signer: CheckpointSigner | None = None) -> ChainState:
    return ChainState(
        0,
        "0" * 64,
        signer=signer,
        checkpoint_every=3,
        checkpoint_interval_s=3600,
        clock=lambda: datetime(2026, 12, 1, tzinfo=UTC),
        hostname="h",
        last_checkpoint_seq=None,
    )


def test_prepared_events_seal_to_the_same_lines_and_verify() -> None:
    # unsigned: checkpoint events carry a fresh EventUid, so only these compare byte for byte
    plain = _state().seal(EVENTS)
    same = _state().seal([prepare(e) for e in EVENTS])
    assert [k.line for k in same.links] == [k.line for k in plain.links]
    assert [k.event.record for k in same.links] == [k.event.record for k in plain.links]
    ahead = _state(SIGNER).seal([prepare(e) for e in EVENTS], force_checkpoint=True)
    assert sum(1 for k in ahead.links if k.checkpoint) == 3
    lines = iter([k.line for k in ahead.links])
    result = verify_lines(lines, head=(ahead.seq, ahead.hash), keys=None, checkpoint_every=3)
    assert result.ok, result.reason
    assert result.count == len(ahead.links) == len(EVENTS) + 3


def test_an_event_carrying_the_marker_is_not_split() -> None:
    assert isinstance(prepare(EVENTS[0]), Prepared)
    assert not isinstance(prepare(EVENTS[-2]), Prepared)
    assert not isinstance(prepare(EVENTS[-1]), Prepared)
