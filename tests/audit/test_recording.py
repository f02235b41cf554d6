"""asciicast v2 recordings: written fail-closed, hashed, readable by asciinema, replayable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.recording import (
    AsciicastWriter,
    RecordingFileError,
    file_sha256,
    play,
    read_cast,
    recording_path,
)


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _record(path: Path) -> tuple[Mono, AsciicastWriter]:
    mono = Mono()
    return mono, AsciicastWriter(
        path,
        width=80,
        height=24,
        title="cobas-c503-1",
        env={"TERM": "xterm"},
        timestamp=1_775_000_000,
        monotonic=mono,
    )


def test_writer_records_output_input_resize_with_size_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "sess-1.cast"
    mono, w = _record(path)
    w.output(b"login ok\r\n$ ")
    mono.t += 1.5
    w.input(b"ls\r")
    w.output(b"ls\r\nresults.csv\r\n"[:5])  # split mid-stream is fine
    w.output(b"ls\r\nresults.csv\r\n"[5:])
    mono.t += 0.25
    w.resize(120, 40)
    w.output("日本語".encode()[:4])  # a multibyte character split across reads
    w.output("日本語".encode()[4:])
    info = w.close()
    assert (info.size, info.sha256) == file_sha256(path)
    header, events = read_cast(path)
    assert header["width"] == 80 and header["env"] == {"TERM": "xterm"}
    evs = list(events)
    assert [e.code for e in evs] == ["o", "i", "o", "o", "r", "o", "o"]
    assert "".join(e.data for e in evs if e.code == "o").endswith("日本語")
    assert evs[1].time == 1.5 and evs[4].data == "120x40"


def test_writer_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "sess-2.cast"
    _, w = _record(path)
    w.close()
    with pytest.raises(RecordingFileError, match="cannot create"):
        _record(path)  # never overwrites an existing recording
    with pytest.raises(RecordingFileError, match="closed"):
        w.output("late")
    (tmp_path / "ro").mkdir(mode=0o500)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecordingFileError):
        AsciicastWriter(blocker / "x.cast", width=80, height=24)  # parent is not a directory
    small = AsciicastWriter(tmp_path / "small.cast", width=80, height=24, max_bytes=200)
    with pytest.raises(RecordingFileError, match="size limit"):
        small.output("x" * 500)


def test_session_ids_cannot_escape_the_recordings_directory(tmp_path: Path) -> None:
    assert recording_path(tmp_path, "abc-123") == tmp_path / "abc-123.cast"
    for bad in ("../etc/passwd", "a/b", "", "x" * 200):
        with pytest.raises(RecordingFileError):
            recording_path(tmp_path, bad)


def test_player_replays_output_with_capped_idle(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    mono, w = _record(path)
    w.output("a")
    mono.t += 30
    w.output("b")
    w.close()
    out: list[str] = []
    sleeps: list[float] = []
    assert play(path, out.append, speed=2.0, max_idle_s=2.0, sleep=sleeps.append) == 2
    assert "".join(out) == "ab" and sleeps == [1.0]


def test_asciinema_itself_can_read_our_recordings(tmp_path: Path) -> None:
    """The asciinema tools' own v2 parser loads the file and sees the same events."""
    from asciinema.asciicast import open_from_url
    from asciinema.asciicast.v2 import get_duration

    path = tmp_path / "s.cast"
    mono, w = _record(path)
    w.output("hello from the analyzer\r\n")
    mono.t += 2.0
    w.output("bye\r\n")
    w.close()
    with open_from_url(str(path)) as cast:
        assert cast.v2_header["width"] == 80
        frames = list(cast.events())
    assert [f[2] for f in frames] == ["hello from the analyzer\r\n", "bye\r\n"]
    assert get_duration(str(path)) == 2.0
    assert json.loads(path.read_text().splitlines()[0])["version"] == 2
