"""The extractor on its own: hostile streams, its bounds, and the suggested rules."""

from __future__ import annotations

import random
import time

import pytest

from broker.live import commands as mod
from broker.live.commands import (
    SUGGESTED_ANALYZER_RULES,
    CommandExtractor,
    CommandRules,
    CommandWatch,
)


def _hostile(rng: random.Random, total: int) -> list[bytes]:
    """Escape floods, unterminated sequences, huge numbers, huge lines, bad UTF-8."""
    kinds = [
        lambda: b"\x1b[" + b"9" * rng.randint(1, 20000) + b"m",
        lambda: b"\x1b[" + b"1;" * rng.randint(1, 5000),
        lambda: b"\x1b]0;" + b"t" * rng.randint(1, 30000),
        lambda: b"\x1b[?1049h" * rng.randint(1, 50) + b"\x1b[?1049l",
        lambda: rng.randbytes(rng.randint(1, 4000)),
        lambda: b"A" * rng.randint(1, 100_000),
        lambda: b"\xff\xfe\xc3" * rng.randint(1, 3000),
        lambda: b"\x1b[999;999H\x1b[2J\x1b[L\x1b[M" * rng.randint(1, 500),
        lambda: b"$ " + b"x" * rng.randint(1, 500) + b"\r\n",
    ]
    out: list[bytes] = []
    n = 0
    while n < total:
        chunk = rng.choice(kinds)()
        out.append(chunk)
        n += len(chunk)
    return out


@pytest.mark.parametrize("seed", range(2))
def test_a_hostile_stream_neither_crashes_it_nor_grows_it(seed: int) -> None:
    rng = random.Random(seed)
    ex = CommandExtractor(80, 24, time.monotonic)
    started = time.monotonic()
    for chunk in _hostile(rng, 600_000):
        ex.output(chunk)
        if rng.random() < 0.3:
            ex.input(rng.choice([b"ls\r", b"\x03", b"\x1b[A", b"\t", b"\xff\xfe", b"x" * 9000]))
        if rng.random() < 0.05:
            ex.resize(rng.randint(-5, 100_000), rng.randint(-5, 100_000))
        ex.process(budget=64 * 1024)
        assert ex.backlog <= mod.MAX_BACKLOG
    for cmd in ex.close():
        assert len(cmd.text) <= mod.MAX_COMMAND
    screen = ex._screen
    assert screen.columns <= mod.MAX_COLS and screen.lines <= mod.MAX_ROWS
    assert len(screen.buffer) <= mod.MAX_ROWS
    assert len(ex._tail) <= mod.TAIL and len(ex._keys) <= mod.MAX_COMMAND
    assert time.monotonic() - started < 60


def test_an_escape_sequence_left_open_is_dropped() -> None:
    ex = CommandExtractor(80, 24, time.monotonic)
    ex.output(b"\x1b]0;" + b"t" * 50_000)  # never terminated
    ex.output(b"\r\n$ ")
    ex.input(b"uptime\r")
    ex.output(b"uptime\r\n")
    assert [c.text for c in ex.close()] == ["uptime"]


def test_falling_behind_drops_the_backlog_and_counts_a_gap() -> None:
    ex = CommandExtractor(80, 24, time.monotonic)
    for _ in range(mod.MAX_BACKLOG // 65536 + 2):
        ex.output(b"y" * 65536)  # never processed in between
    assert ex.gaps == 1 and ex.backlog <= mod.MAX_BACKLOG
    ex.output(b"\r\n$ ")
    ex.input(b"id\r")
    ex.output(b"id\r\n")
    assert [c.text for c in ex.close()] == ["id"]


def test_bulk_output_is_not_emulated_yet_the_next_prompt_is_read() -> None:
    ex = CommandExtractor(80, 24, time.monotonic)
    ex.output(b"$ ")
    ex.input(b"cat big.log\r")
    ex.output(b"cat big.log\r\n")
    ex.output(b"".join(b"line %d of the log\r\n" % i for i in range(50_000)))
    ex.output(b"$ ")
    ex.input(b"ls\r")
    ex.output(b"ls\r\n")
    assert [c.text for c in ex.close()] == ["cat big.log", "ls"]
    assert ex.skipped > 500_000


def test_what_is_typed_at_a_password_prompt_is_not_a_command() -> None:
    ex = CommandExtractor(80, 24, time.monotonic)
    ex.output(b"$ ")
    ex.input(b"sudo -k true\r")
    ex.output(b"sudo -k true\r\n[sudo] password for svc: ")
    ex.input(b"s3cret\r")
    ex.output(b"\r\n$ ")
    assert [c.text for c in ex.close()] == ["sudo -k true"]


@pytest.mark.parametrize(
    ("line", "action"),
    [
        ("rm -rf /", "deny"),
        ("rm -fr /*", "deny"),
        ("sudo rm --recursive --force /", "deny"),
        ("rm -rf /tmp/old", None),
        ("mkfs.ext4 /dev/sdb1", "deny"),
        ("dd if=image.img of=/dev/sda bs=4M", "deny"),
        ("dd if=/dev/sda of=backup.img", None),
        ("shutdown -h now", "hold"),
        ("sudo reboot", "hold"),
        ("systemctl poweroff", "hold"),
        ("echo reboot later", None),
        ("grep shutdown /var/log/syslog", None),
    ],
)
def test_suggested_rules_for_analyzers(line: str, action: str | None) -> None:
    rule = CommandRules.parse(SUGGESTED_ANALYZER_RULES).match([line])
    assert (rule.action if rule else None) == action


def test_a_bad_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="not valid"):
        CommandRules.parse([{"action": "deny", "pattern": "rm ("}])
    with pytest.raises(ValueError, match="deny or hold"):
        CommandRules.parse([{"action": "log", "pattern": "rm"}])


async def test_rules_fail_closed_when_reading_broke() -> None:
    rules = CommandRules.parse(SUGGESTED_ANALYZER_RULES)
    watch = CommandWatch(CommandExtractor(80, 24, time.monotonic), lambda _c: None, rules)
    watch.output(b"$ ")
    watch.input(b"ls")
    watch.output(b"ls")
    assert (await watch.judge())[0] is None
    watch.broken = True
    rule, _line = await watch.judge()
    assert rule is not None and rule.action == "deny"
    # without rules nothing is judged, broken or not
    assert (await CommandWatch(watch.extractor, lambda _c: None).judge())[0] is None
