"""Shell commands through the broker: stock ssh, the lab's real sshd, real events."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from audit.events import AuditEvent
from bench import commands_corpus as corpus
from broker.live.commands import SUGGESTED_ANALYZER_RULES
from tests.commands.terminal import SshTerminal, with_rules
from tests.frontdoor.harness import World
from tests.support import poll

SCRIPTS = {s.name: s for s in corpus.SCRIPTS}


def _cast(path: Path) -> list[list[Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()[1:]]


def _shell_commands(w: World) -> list[AuditEvent]:
    return [e for e in w.events.of_type("session.command") if e.details.get("source") == "shell"]


async def _run(w: World, script: corpus.Script) -> corpus.Capture:
    term = SshTerminal(w)
    try:
        await asyncio.to_thread(corpus.run_script, term, script)
    finally:
        await asyncio.to_thread(term.close)
    await poll(lambda: bool(w.events.of_type("session.ended")), 10)
    return term.capture


async def test_commands_typed_in_a_shell_become_events(granted: World) -> None:
    w = granted
    script = SCRIPTS["multi-line"]
    await _run(w, script)
    events = _shell_commands(w)
    assert [e.details["command"] for e in events] == list(corpus.expected(script))
    ended = w.events.of_type("session.ended")[0]
    for e in events:
        assert e.get("TargetSessionId") == ended.get("TargetSessionId")
        assert e.get("ActorUsername") == "alice" and e.get("TargetHostname") == w.instrument
    offsets = [e.details["offset"] for e in events]
    assert offsets == sorted(offsets) and offsets[0] > 0
    loop = next(e for e in events if e.details["command"].startswith("for i"))
    assert loop.details["cwd"] == "cobas-c503-1" and loop.details["prompt"].endswith(("$", "#"))
    # the offset is where the command shows in the recording: its echo is right there
    cast = _cast(w.tmp / "recordings" / ended.details["recording"])
    after = "".join(
        str(x[2]) for x in cast if x[1] == "o" and float(x[0]) >= loop.details["offset"] - 0.5
    )
    assert "item 3" in after


async def test_with_no_rules_the_recording_is_exactly_what_was_relayed(granted: World) -> None:
    """The reader only watches: each byte typed and shown is recorded as it was relayed."""
    w = granted
    with_rules(w, (), record_input=True)
    cap = await _run(w, SCRIPTS["bash-tab-completion"])
    cast = _cast(w.tmp / "recordings" / w.events.of_type("session.ended")[0].details["recording"])
    typed = b"".join(d for k, d in cap.chunks if k == "i").decode()
    shown = b"".join(d for k, d in cap.chunks if k == "o").decode(errors="replace")
    assert "".join(str(x[2]) for x in cast if x[1] == "i") == typed.replace("\r\n", "\r")
    recorded = "".join(str(x[2]) for x in cast if x[1] == "o")
    assert shown in recorded or recorded in shown  # ssh's own closing line may follow
    assert not [x for x in cast if x[1] == "m"]
    assert not w.events.of_type("session.command_denied")


async def test_a_denied_command_never_reaches_the_instrument(granted: World) -> None:
    w = granted
    rules = (
        *SUGGESTED_ANALYZER_RULES,
        {"action": "deny", "pattern": r"\btouch\s+forbidden\b", "reason": "a test rule"},
    )
    with_rules(w, rules)
    term = SshTerminal(w)
    try:
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        # typed fast, in one packet: the shell's echo is not back when Enter arrives
        term.send(b"touch forbidden\r")
        await asyncio.to_thread(term.wait, r"not sent \*\*\*")
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        # edited into a denied line on the screen (history, then editing)
        term.send(corpus.BASH.encode() + b"\r")
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"touch allowed\r")
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"\x1b[A")
        await asyncio.to_thread(term.wait, "allowed")
        term.send(b"\x7f\x7f\x7f\x7f\x7f\x7f\x7fforbidden")
        await asyncio.to_thread(term.wait, "forbidden")
        term.send(b"\r")
        await asyncio.to_thread(term.wait, r"not sent \*\*\*")
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"rm -rf /\r")
        await asyncio.to_thread(term.wait, r"deleting the whole file system\); it was not sent")
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"touch forbidden\x0f")  # Ctrl-O: readline runs the line as Enter does
        await asyncio.to_thread(term.wait, r"not sent \*\*\*")
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"echo still-here-$((6*7))\r")
        await asyncio.to_thread(term.wait, "still-here-42")
        term.send(b"exit\r")
        await asyncio.to_thread(term.finish)
    finally:
        await asyncio.to_thread(term.close)
    await poll(lambda: bool(w.events.of_type("session.ended")), 10)
    assert (w.data_dir / "allowed").exists()
    assert not (w.data_dir / "forbidden").exists()
    denied = w.events.of_type("session.command_denied")
    assert [e.details["command"] for e in denied] == [
        "touch forbidden",
        "touch forbidden",
        "rm -rf /",
        "touch forbidden",
    ]
    assert all(e.get("EventResult") == "Failure" for e in denied)
    assert denied[2].details["reason"] == "deleting the whole file system"
    alerts = [e for e in w.events.of_type("alert.raised") if e.details["alert"] == "command_denied"]
    assert len(alerts) == 4 and "rm -rf /" not in str(alerts[2].details["reason"])
    assert alerts[-1].get("TargetHostname") == w.instrument
    ran = [e.details["command"] for e in _shell_commands(w)]
    assert "touch allowed" in ran and "echo still-here-$((6*7))" in ran
    assert not any("forbidden" in c or c == "rm -rf /" for c in ran)
    (w.data_dir / "allowed").unlink()


async def test_bulk_output_is_not_held_up_and_the_next_command_is_still_read(
    granted: World,
) -> None:
    """Twenty megabytes printed in a shell pass at relay speed; the reader catches up."""
    w = granted
    with_rules(w, SUGGESTED_ANALYZER_RULES)
    term = SshTerminal(w)
    try:
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        started = time.monotonic()
        term.send(b"head -c 20000000 /dev/zero | tr '\\0' x | fold -w 100; echo end-$((3*3))\r")
        await asyncio.to_thread(term.wait, "end-9", 60)
        took = time.monotonic() - started
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"echo next-$((4*4))\r")
        await asyncio.to_thread(term.wait, "next-16")
        term.send(b"exit\r")
        await asyncio.to_thread(term.finish)
    finally:
        await asyncio.to_thread(term.close)
    await poll(lambda: bool(w.events.of_type("session.ended")), 10)
    ran = [e.details["command"] for e in _shell_commands(w)]
    assert ran == [
        "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 100; echo end-$((3*3))",
        "echo next-$((4*4))",
        "exit",
    ]
    print(f"20 MB through a shell with command rules: {20 / took:.1f} MB/s")
    assert took < 30
