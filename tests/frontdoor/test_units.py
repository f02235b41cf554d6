"""The pure parts: login names, the grant watcher, the recorder, the user CA."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import asyncssh
import pytest

from audit.testing import CapturingEmitter
from broker.frontdoor.auth import LoginName, parse_login
from broker.frontdoor.ca import CertificateRefused, UserCA
from broker.live.errors import RecordingError
from broker.live.recorder import Recording
from broker.live.sessions import LiveSession, SessionRegistry
from tests.frontdoor.harness import T0, FakePolicy
from tests.support import FakeClock


@pytest.mark.parametrize(
    ("login", "parsed"),
    [
        ("alice+cobas-c503-1", LoginName("alice", "cobas-c503-1")),
        ("alice", LoginName("alice", None)),
        ("a.b-c_d+lis-server", LoginName("a.b-c_d", "lis-server")),
        ("alice+Cobas", None),
        ("alice+", None),
        ("+x", None),
        ("alice+-x", None),
        ("alice+a+b", None),
        ("al ice+x", None),
        ("alice+" + "x" * 64, None),
        ("", None),
    ],
)
def test_login_names(login: str, parsed: LoginName | None) -> None:
    assert parse_login(login) == parsed


def _registry() -> tuple[
    SessionRegistry, FakePolicy, FakeClock, CapturingEmitter, list[str], list[str]
]:
    clock, policy, events = FakeClock(T0), FakePolicy(), CapturingEmitter()
    eng, _ = policy.add_engineer("alice", "ssh-ed25519 AAAAkey")
    g = policy.grant(eng, "cobas-c503-1", (22,), ends=T0 + timedelta(minutes=10))
    reg = SessionRegistry(policy, events, clock)
    ended: list[str] = []
    warned: list[str] = []
    reg.add(
        LiveSession(
            "s1",
            "shell",
            eng.user_id,
            "alice",
            "cobas-c503-1",
            "h-1",
            g.grant_id,
            22,
            T0,
            on_terminate=ended.append,
            on_warning=warned.append,
        )
    )
    return reg, policy, clock, events, ended, warned


def test_watcher_warns_once_at_five_and_one_minute_and_ends_at_expiry() -> None:
    reg, _policy, clock, events, ended, warned = _registry()
    reg.check_once()
    assert warned == [] and ended == []
    clock.advance(5 * 60)  # 5 minutes left
    reg.check_once()
    reg.check_once()
    assert len(warned) == 1 and "5 minutes" in warned[0]
    clock.advance(4 * 60)
    reg.check_once()
    assert len(warned) == 2 and "1 minute " in warned[1]
    clock.advance(60)
    reg.check_once()
    assert ended == ["grant_expired"]
    assert [e.type for e in events.events].count("session.terminated") == 1
    reg.check_once()  # already ending: not terminated twice
    assert ended == ["grant_expired"]


def test_watcher_ends_sessions_when_the_policy_fails() -> None:
    """A policy error counts as "no longer valid": fail closed."""
    reg, policy, _clock, _events, ended, _ = _registry()

    def broken(*_a: object) -> None:
        raise RuntimeError("database down")

    policy.grant_end = broken  # type: ignore[method-assign,assignment]
    reg.check_once()
    assert ended == ["grant_check_failed"]


def test_recording_is_asciicast_v2_with_size_and_hash(tmp_path: Path) -> None:
    ticks = iter([0.0, 0.5, 1.0, 1.5, 2.0])
    rec = Recording.open(
        tmp_path,
        "s1",
        width=80,
        height=24,
        env={"TERM": "xterm"},
        title="t",
        wall_clock=lambda: 1_700_000_000,
        monotonic=lambda: next(ticks),
    )
    rec.output(b"caf\xc3")  # a UTF-8 character split across two reads
    rec.output(b"\xa9 ok\r\n")
    rec.input(b"ls\r")
    rec.resize(100, 30)
    summary = rec.close()
    lines = summary.path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": 1_700_000_000,
        "env": {"TERM": "xterm"},
        "title": "t",
    }
    assert [json.loads(x) for x in lines[1:]] == [
        [0.5, "o", "caf"],
        [1.0, "o", "é ok\r\n"],
        [1.5, "i", "ls\r"],
        [2.0, "r", "100x30"],
    ]
    import hashlib

    data = summary.path.read_bytes()
    assert (summary.size, summary.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_recording_escapes_output_exactly_as_the_json_encoder_does(tmp_path: Path) -> None:
    """The fast escaping of ASCII output gives the json module's ASCII-only text, for
    every control character, quote, backslash and DEL; non-ASCII goes the slow way."""
    from json.encoder import encode_basestring_ascii

    from broker.live.recorder import json_escape_ascii

    every = bytes(range(128))
    for data in (every, b"plain text\n" * 50, b'\x1b[1m"q"\\ \t\r\n\x7f', b""):
        assert json_escape_ascii(data) == encode_basestring_ascii(data.decode())[1:-1].encode()
    rec = Recording.open(tmp_path, "s2", width=80, height=24, env={}, title="")
    rec.output(every)
    rec.output("é\x1b".encode())
    rec.output(b"\xff")
    path = rec.close().path
    assert path.read_bytes().isascii()
    texts = [json.loads(x)[2] for x in path.read_text().splitlines()[1:]]
    assert texts == [every.decode(), "é\x1b", "\ufffd"]


def test_recording_refuses_to_overwrite_and_reports_unwritable(tmp_path: Path) -> None:
    Recording.open(tmp_path, "s1", width=1, height=1, env={}, title="").close()
    with pytest.raises(RecordingError, match="cannot be written"):
        Recording.open(tmp_path, "s1", width=1, height=1, env={}, title="")


def test_user_certificates_last_at_most_eight_hours_or_the_grant() -> None:
    ca, events = UserCA.generate(), CapturingEmitter()
    user = asyncssh.generate_private_key("ssh-ed25519")
    line = user.export_public_key().decode()
    cert_line = ca.issue(
        line, username="alice", user_id="u1", now=T0, grants_end=None, serial=1, emitter=events
    )
    cert = asyncssh.import_certificate(cert_line)
    assert ca.accepts(cert, "alice", T0 + timedelta(hours=7, minutes=59))
    assert not ca.accepts(cert, "alice", T0 + timedelta(hours=8))
    assert not ca.accepts(cert, "bob", T0)
    assert not UserCA.generate().accepts(cert, "alice", T0)
    short = asyncssh.import_certificate(
        ca.issue(
            line,
            username="alice",
            user_id="u1",
            now=T0,
            grants_end=T0 + timedelta(hours=1),
            serial=2,
            emitter=events,
        )
    )
    assert not ca.accepts(short, "alice", T0 + timedelta(hours=1))
    with pytest.raises(CertificateRefused):
        ca.issue(
            line, username="alice", user_id="u1", now=T0, grants_end=T0, serial=3, emitter=events
        )
    assert [e.details["cert_serial"] for e in events.of_type("ssh.cert_issued")] == [1, 2]


def test_source_networks() -> None:
    from broker.frontdoor.auth import source_allowed

    assert source_allowed((), "10.1.2.3")
    assert source_allowed(("10.0.0.0/8",), "10.1.2.3")
    assert not source_allowed(("10.0.0.0/8",), "11.1.2.3")
    assert not source_allowed(("10.0.0.0/8",), "not-an-ip")
    assert not source_allowed(("bogus",), "10.1.2.3")


async def test_coalescing_transport_sends_one_pass_of_writes_as_one_in_order() -> None:
    """Packets written in one loop pass reach the socket as one write, same bytes, same
    order; closing sends what is still queued."""
    import asyncio

    from wire.transport import CoalescingTransport

    class Sink(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            self.writes.append(bytes(data))

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

        def get_write_buffer_size(self) -> int:
            return 0

    sink = Sink()
    t = CoalescingTransport(sink)
    for part in (b"ignore", b"data-1", b"data-2"):
        t.write(part)
    assert sink.writes == [] and t.get_write_buffer_size() == 18
    await asyncio.sleep(0)  # the point: one turn of the loop flushes, not a condition to poll
    assert sink.writes == [b"ignoredata-1data-2"]
    t.write(b"disconnect")
    t.close()
    assert sink.writes[-1] == b"disconnect" and sink.closed
