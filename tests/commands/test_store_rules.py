"""The hospital policy's command rules, as the real store hands them to the front door."""

from __future__ import annotations

import asyncio

import pytest

from bench import commands_corpus as corpus
from tests.commands.terminal import SshTerminal
from tests.frontdoor.harness import World
from tests.support import poll


@pytest.fixture
def policy_kind() -> str:
    return "store"


async def test_rules_set_in_the_hospital_policy_apply_to_its_instrument(granted: World) -> None:
    w = granted
    s = w.policy.s
    s.estate.update_instrument(w.policy.actors["hadmin"], w.instrument, {"department": "chemistry"})
    s.estate.update_policy(
        w.policy.actors["hadmin"],
        "hoshi-hospital",
        {
            "command_rules": [
                {"action": "deny", "pattern": r"\btouch\s+mine\b", "instrument": w.instrument},
                {"action": "deny", "pattern": r"\btouch\s+elsewhere\b", "instrument": "other-1"},
                {"action": "deny", "pattern": r"\btouch\s+chem\b", "department": "chemistry"},
                {"action": "deny", "pattern": r"\btouch\s+hema\b", "department": "hematology"},
            ]
        },
    )
    term = SshTerminal(w)
    try:
        await asyncio.to_thread(term.wait, corpus.PROMPT)
        for line in ("touch mine", "touch elsewhere", "touch chem", "touch hema"):
            term.send(line.encode() + b"\r")
            await asyncio.to_thread(term.wait, corpus.PROMPT)
        term.send(b"exit\r")
        await asyncio.to_thread(term.finish)
    finally:
        await asyncio.to_thread(term.close)
    await poll(lambda: bool(w.events.of_type("session.ended")), 10)
    denied = [e.details["command"] for e in w.events.of_type("session.command_denied")]
    assert denied == ["touch mine", "touch chem"]
    assert not (w.data_dir / "mine").exists() and not (w.data_dir / "chem").exists()
    assert (w.data_dir / "elsewhere").exists() and (w.data_dir / "hema").exists()
    for name in ("elsewhere", "hema"):
        (w.data_dir / name).unlink()
