"""The gateway<->broker contract: snapshot, codec limits, originator format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import wire
from wire.schema import contract

SNAPSHOT = Path(__file__).with_name("schema_snapshot.json")
NOW = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def test_schema_matches_the_snapshot() -> None:
    """Any change to the contract shows up here; regenerate with ``python -m wire.schema``
    only together with a protocol version decision (old gateways stay in the field)."""
    assert json.loads(SNAPSHOT.read_text()) == json.loads(json.dumps(contract()))


def test_every_message_round_trips() -> None:
    msgs: list[wire.Message] = [
        wire.Hello(
            protocol=1,
            gateway_version="0.1.0",
            mode=wire.Mode.WINDOW_ONLY,
            purpose=wire.Purpose.CHECK,
            gateway_time=NOW,
        ),
        wire.Inventory(
            instruments=(
                wire.models.InventoryEntry(
                    name="cobas-c503-1",
                    host="10.0.0.5",
                    ports=(22,),
                    protocol="ssh",
                    reachable=True,
                    host_key_fingerprint="SHA256:abc",
                ),
            )
        ),
        wire.AuditBatch(events=({"EventType": "gateway.paused", "ChainSeq": 3},)),
        wire.Welcome(protocol=1, broker_version="0.1.0", gateway_id="g1", broker_time=NOW),
        wire.Windows(windows=(wire.Window(start=NOW, end=NOW + timedelta(hours=1)),)),
        wire.Ack(upto_seq=7),
        wire.Heartbeat(seq=1, sent_at=NOW),
        wire.Bye(reason="paused"),
        wire.ErrorMessage(code="bad_message", message="no"),
    ]
    for m in msgs:
        line = wire.encode(m)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert wire.decode(line.rstrip(b"\n")) == m


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json", wire.MalformedMessage),
        (b"[1,2]", wire.MalformedMessage),
        (b'{"no":"type"}', wire.MalformedMessage),
        (b'{"type":"hello","protocol":1}', wire.MalformedMessage),
        (b'{"type":"ack","upto_seq":-1}', wire.MalformedMessage),
        (b'{"type":"ack","upto_seq":1,"extra":true}', wire.MalformedMessage),
        (b'{"type":"launch_missiles"}', wire.UnknownMessageType),
        (b"[" * 100_000 + b"]" * 100_000, wire.MalformedMessage),
        (
            b'{"type":"audit","events":[{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}]}",
            wire.MalformedMessage,
        ),
        (
            b'{"type":"windows","windows":[{"start":"2026-01-01T10:00:00Z",'
            b'"end":"2026-01-01T09:00:00Z"}]}',
            wire.MalformedMessage,
        ),
        (
            b'{"type":"windows","windows":[{"start":"2026-01-01T08:00:00",'
            b'"end":"2026-01-01T09:00:00"}]}',
            wire.MalformedMessage,
        ),
    ],
)
def test_bad_lines_are_refused_with_a_clear_error(line: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        wire.decode(line)
    assert str(info.value)


def test_oversized_message_is_refused_both_ways() -> None:
    big = wire.Bye(reason="x" * 200)
    with pytest.raises(wire.MessageTooLarge):
        wire.encode(big, limit=100)
    with pytest.raises(wire.MessageTooLarge):
        wire.decode(b"{" + b" " * 300 + b"}", limit=100)


def test_framer_splits_lines_and_resynchronises_after_an_oversized_one() -> None:
    f = wire.LineFramer(limit=16)
    assert f.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert f.feed(b":2}\n") == [b'{"b":2}']
    out = f.feed(b"x" * 40)
    assert len(out) == 1 and isinstance(out[0], wire.MessageTooLarge)
    assert f.feed(b"y" * 100) == []  # still discarding, memory bounded
    assert f.feed(b'zz\n{"c":3}\n') == [b'{"c":3}']


def test_originator_round_trips_and_refuses_odd_characters() -> None:
    o = wire.Originator("s-1a2b", "tanaka@vendor")
    assert wire.decode_originator(wire.encode_originator(o)) == o
    assert wire.decode_originator("10.0.0.1") is None
    assert wire.decode_originator("hoshu1:a b:c") is None
    with pytest.raises(ValueError):
        wire.encode_originator(wire.Originator("s:1", "x"))
