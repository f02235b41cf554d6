"""The session journal waits for the disk off the event loop: a slow ``fsync`` holds up
no other session, while the entry is still written and locked before ``opened``
returns (a broker killed right after leaves it behind) and reaches the disk in order."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from broker.live.journal import LiveJournal
from tests.support import poll

ROOT = Path(__file__).resolve().parents[2]
ENTRY = {"columns": {"ActorUsername": "alice"}, "details": {"kind": "shell"}}


class _SlowDisk:
    """``os.fsync`` of a disk that takes ``delay_s`` per call (the real fsync after it)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.synced: list[int] = []
        self.threads: set[str] = set()
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)  # the disk's latency, not a wait for the test
        self._real(fd)
        self.synced.append(fd)


async def test_a_slow_fsync_does_not_hold_up_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _SlowDisk(0.5)
    monkeypatch.setattr(os, "fsync", disk)
    journal = LiveJournal(tmp_path)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(4):
        journal.opened(f"s-{i}", ENTRY)
    took = loop.time() - t0
    assert took < 0.4, f"opening 4 entries took {took:.2f} s on the event loop"
    # the entries are there and readable at once, before any fsync finished
    assert sorted(p.stem for p in (tmp_path / ".live").glob("*.json")) == [
        f"s-{i}" for i in range(4)
    ]
    assert json.loads((tmp_path / ".live" / "s-0.json").read_text()) == ENTRY
    await asyncio.wait_for(journal.synced("s-3"), 10)
    assert len(disk.synced) == 4  # one thread, in order: the last done means all done
    assert threading.current_thread().name not in disk.threads
    for i in range(4):
        journal.closed(f"s-{i}")


async def test_an_entry_closed_while_its_fsync_runs_closes_its_descriptor_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _SlowDisk(0.3)
    monkeypatch.setattr(os, "fsync", disk)
    journal = LiveJournal(tmp_path)
    journal.opened("s-short", ENTRY)
    fd = journal._held["s-short"]
    journal.closed("s-short")  # the session ended before its entry reached the disk
    assert not (tmp_path / ".live" / "s-short.json").exists()
    os.fstat(fd)  # still open: the fsync still uses it
    await asyncio.wait_for(journal.synced("s-short"), 10)  # nothing pending any more

    def closed() -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return True
        return False

    await poll(closed, 10, what="the worker closing the descriptor after its fsync")
    assert disk.synced == [fd]


def test_a_broker_killed_right_after_opening_leaves_the_entry_locked_until_it_dies(
    tmp_path: Path,
) -> None:
    """The entry is on disk and locked when ``opened`` returns, fsync pending or not."""
    script = (
        "import json, os, sys, time; from pathlib import Path; "
        "from broker.live import journal as j; "
        "j.os.fsync = lambda fd: time.sleep(30); "  # a disk that never answers
        "j.LiveJournal(Path(sys.argv[1])).opened('s-killed', json.loads(sys.argv[2])); "
        "print('opened', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), json.dumps(ENTRY)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "opened"
        path = tmp_path / ".live" / "s-killed.json"
        assert json.loads(path.read_text()) == ENTRY
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the live broker holds it
            proc.kill()
            proc.wait(timeout=30)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the broker is gone
        finally:
            os.close(fd)
        assert json.loads(path.read_text()) == ENTRY  # left behind for end_lost_sessions
    finally:
        proc.kill()
        proc.wait(timeout=30)
