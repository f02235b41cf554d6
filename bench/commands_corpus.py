"""The shell-command accuracy corpus: scripted sessions with their expected commands.

Each :class:`Script` is typed into a real shell (the lab's OpenSSH instrument:
dash as the login shell, then bash) over a terminal channel, waiting for the
shell's output as a person would; :func:`drive` records every chunk of input
and output in order (a :class:`Capture`).  :func:`replay` runs a capture through
:class:`~broker.live.commands.CommandExtractor`, whole or with the output cut in
pieces of a few bytes (a slow link), and :func:`score` counts exact matches,
invented and missed commands.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from broker.live.commands import Command, CommandExtractor

PROMPT = r"[#$] $"  # the end of a dash or bash prompt
BASH = "exec bash --norc --noprofile"
PS1 = r"PS1='\u@\h:\W\$ '"  # the directory's name: a prompt of about the same length anywhere
WIDTH, HEIGHT = 80, 24

# a step: ("type", text) sends text; ("wait", regex) waits for it in the output since
# the last wait
Step = tuple[str, str]


@dataclass(frozen=True)
class Script:
    name: str
    steps: tuple[Step, ...]
    expected: tuple[str, ...]


def line(text: str, until: str = PROMPT) -> tuple[Step, Step]:
    return ("type", text + "\r"), ("wait", until)


def _bash() -> tuple[Step, ...]:
    return (*line(BASH), *line(PS1))


SCRIPTS: tuple[Script, ...] = (
    Script(
        "dash-basics",
        (
            *line("ls"),
            *line("cat config/analyzer.ini"),
            *line("echo hello   world"),
            *line("cd logs"),
            *line("pwd"),
            *line("grep -c ERROR analyzer.log || true"),
        ),
        (
            "ls",
            "cat config/analyzer.ini",
            "echo hello   world",
            "cd logs",
            "pwd",
            "grep -c ERROR analyzer.log || true",
        ),
    ),
    Script(
        "bash-readline-editing",
        (
            *_bash(),
            ("type", "echo helo"),
            ("wait", "helo"),
            ("type", "\x1b[D"),
            ("type", "l\r"),
            ("wait", PROMPT),
            ("type", "echo x"),
            ("wait", "x"),
            ("type", "\x01time \r"),  # Ctrl-A: to the start of the line
            ("wait", PROMPT),
            ("type", "ls -l /nowhere"),
            ("wait", "nowhere"),
            ("type", "\x17config\r"),  # Ctrl-W: the last word erased
            ("wait", PROMPT),
            ("type", "datee"),
            ("wait", "datee"),
            ("type", "\x7f -u\r"),  # Backspace
            ("wait", PROMPT),
            ("type", "rm -rf everything"),
            ("wait", "everything"),
            ("type", "\x15uname -a\r"),  # Ctrl-U: the line erased
            ("wait", PROMPT),
        ),
        (BASH, PS1, "echo hello", "time echo x", "ls -l config", "date -u", "uname -a"),
    ),
    Script(
        "bash-history",
        (
            *_bash(),
            *line("echo one"),
            *line("echo two"),
            ("type", "\x1b[A"),
            ("wait", "two"),
            ("type", "\x1b[A"),
            ("wait", "one"),
            ("type", "\r"),
            ("wait", PROMPT),
            ("type", "\x12two"),  # Ctrl-R: reverse search
            ("wait", "reverse-i-search"),
            ("type", "\r"),
            ("wait", PROMPT),
            ("type", "\x1b[A"),
            ("wait", "two"),
            ("type", " three\r"),
            ("wait", PROMPT),
        ),
        (BASH, PS1, "echo one", "echo two", "echo one", "echo two", "echo two three"),
    ),
    Script(
        "bash-tab-completion",
        (
            *_bash(),
            ("type", "cat con\t"),
            ("wait", "config/"),
            ("type", "ana\t"),
            ("wait", "analyzer.ini"),
            ("type", "\r"),
            ("wait", PROMPT),
            *line("touch run-a.txt run-b.txt"),
            ("type", "ls run-\t\t"),
            ("wait", r"run-b\.txt[\s\S]*ls run-$"),
            ("type", "a\t\r"),
            ("wait", PROMPT),
            *line("rm run-a.txt run-b.txt"),
        ),
        (
            BASH,
            PS1,
            "cat config/analyzer.ini",
            "touch run-a.txt run-b.txt",
            "ls run-a.txt",
            "rm run-a.txt run-b.txt",
        ),
    ),
    Script(
        "ctrl-c",
        (
            *_bash(),
            ("type", "echo abandoned"),
            ("wait", "abandoned"),
            ("type", "\x03"),
            ("wait", PROMPT),
            *line("read -r answer", until="read -r answer\r\n"),
            ("type", "\x03"),
            ("wait", PROMPT),
            *line("echo kept"),
        ),
        (BASH, PS1, "read -r answer", "echo kept"),
    ),
    Script(
        "multi-line",
        (
            *_bash(),
            *line("for i in 1 2 3; do", until="> $"),
            *line("  echo item $i", until="> $"),
            *line("done"),
            *line("cat <<EOF > note.txt", until="> $"),
            *line("first line", until="> $"),
            *line("EOF"),
            *line("echo 'open", until="> $"),
            ("type", "\x03"),  # Ctrl-C at the continuation prompt: nothing runs
            ("wait", PROMPT),
            *line("rm note.txt"),
        ),
        (
            BASH,
            PS1,
            "for i in 1 2 3; do\n  echo item $i\ndone",
            "cat <<EOF > note.txt\nfirst line\nEOF",
            "rm note.txt",
        ),
    ),
    Script(
        "full-screen-programs",
        (
            *_bash(),
            *line("echo before"),
            ("type", "vi -u NONE -N notes.txt\r"),
            ("wait", r'"notes\.txt"'),  # vi's own status line, not the echoed command
            ("type", "ils -l\r"),
            ("type", "rm -rf /tmp/never\x1b"),
            ("type", ":wq\r"),
            ("wait", PROMPT),
            ("type", "less config/analyzer.ini\r"),
            ("wait", r"service use only"),  # the file shown by less, not the echoed command
            ("type", "/serial\r"),
            ("type", "q"),
            ("wait", PROMPT),
            ("type", "top -d 5\r"),
            ("wait", r"load average"),
            ("type", "q"),
            ("wait", PROMPT),
            *line("rm notes.txt"),
            *line("echo after"),
        ),
        (
            BASH,
            PS1,
            "echo before",
            "vi -u NONE -N notes.txt",
            "less config/analyzer.ini",
            "top -d 5",
            "rm notes.txt",
            "echo after",
        ),
    ),
    Script(
        "bash-type-ahead",
        (
            *_bash(),
            ("type", "sleep 0.5\r"),
            ("type", "echo typed ahead\r"),  # before the prompt is back
            ("wait", "typed ahead\r\n"),
            ("wait", PROMPT),
        ),
        (BASH, PS1, "sleep 0.5", "echo typed ahead"),
    ),
    Script(
        "long-and-unicode-lines",
        (
            *_bash(),
            *line("echo " + "abcdefghij" * 15),
            *line("echo 検体 ラック 12"),
            *line("printf '%s\\n' a b c | wc -l"),
        ),
        (
            BASH,
            PS1,
            "echo " + "abcdefghij" * 15,
            "echo 検体 ラック 12",
            "printf '%s\\n' a b c | wc -l",
        ),
    ),
)


@dataclass
class Capture:
    """What one script sent and got, in order: ("i" | "o", bytes)."""

    name: str
    width: int
    height: int
    chunks: list[tuple[str, bytes]] = field(default_factory=list)


class Terminal:
    """A paramiko shell channel that records what is sent and read."""

    def __init__(self, chan: paramiko.Channel, capture: Capture) -> None:
        self.chan = chan
        self.capture = capture
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.capture.chunks.append(("i", data))
        self.chan.sendall(data)

    def read(self, timeout: float) -> bytes | None:
        """Some output; b"" at its end; None when nothing came within ``timeout``."""
        if self.chan.recv_ready():
            return bytes(self.chan.recv(65536))
        # the end is the channel's EOF, not its exit status: sshd may send the status
        # before the last of the pty's output (the echo of the final ``exit``)
        if (self.chan.eof_received or self.chan.closed) and not self.chan.recv_ready():
            return b""
        time.sleep(min(timeout, 0.005))  # polling the channel, not waiting for a result
        return None

    def wait(self, pattern: str, deadline_s: float = 15.0) -> None:
        rx = re.compile(pattern.encode(), re.M)
        end = time.monotonic() + deadline_s
        while not (m := rx.search(self.buf)):
            if time.monotonic() > end:
                raise AssertionError(f"{pattern!r} not seen; got {self.buf[-300:]!r}")
            data = self.read(0.05)
            if data is None:
                continue
            if not data:
                raise AssertionError(f"shell ended before {pattern!r}; got {self.buf[-300:]!r}")
            self.capture.chunks.append(("o", data))
            self.buf += data
        self.buf = self.buf[m.end() :]  # what came after is for the next wait

    def finish(self, deadline_s: float = 10.0) -> None:
        """Read to the end of the shell's output."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            data = self.read(0.05)
            if data == b"":
                return
            if data:
                self.capture.chunks.append(("o", data))


def drive(chan: paramiko.Channel, script: Script) -> Capture:
    """Type ``script`` into the shell on ``chan`` (a pty of WIDTH x HEIGHT)."""
    cap = Capture(script.name, WIDTH, HEIGHT)
    run_script(Terminal(chan, cap), script)
    return cap


def run_script(term: Terminal, script: Script) -> None:
    """Type ``script`` on ``term`` waiting as a person would, then ``exit``."""
    term.wait(PROMPT)
    for kind, text in script.steps:
        if kind == "type":
            term.send(text.encode())
        else:
            term.wait(text)
    term.send(b"exit\r")
    term.finish()


def replay(cap: Capture, *, slow: bool = False, seed: int = 7) -> list[Command]:
    """The commands the extractor reads from ``cap``; ``slow``: output in 1-7 byte pieces."""
    rng = random.Random(seed)
    clock = iter(range(1_000_000))
    ex = CommandExtractor(cap.width, cap.height, lambda: float(next(clock)))
    for kind, data in cap.chunks:
        if kind == "i":
            ex.input(data)
        elif slow:
            i = 0
            while i < len(data):
                n = rng.randint(1, 7)
                ex.output(data[i : i + n])
                i += n
        else:
            ex.output(data)
    return ex.close()


@dataclass
class Score:
    expected: int = 0
    found: int = 0
    exact: int = 0
    invented: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def add(self, expected: tuple[str, ...], found: list[str]) -> None:
        self.expected += len(expected)
        self.found += len(found)
        rest = list(found)
        for cmd in expected:
            if cmd in rest:
                rest.remove(cmd)
                self.exact += 1
            else:
                self.missed.append(cmd)
        self.invented += rest

    @property
    def precision(self) -> float:
        return self.exact / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.exact / self.expected if self.expected else 1.0


def score(results: list[tuple[Script, list[str]]]) -> Score:
    s = Score()
    for script, found in results:
        s.add(expected(script), found)
    return s


def expected(script: Script) -> tuple[str, ...]:
    """The script's commands and the ``exit`` :func:`drive` ends the shell with."""
    return (*script.expected, "exit")


def capture(host: str, port: int, username: str, key: Path, script: Script) -> Capture:
    """Run ``script`` in a shell of the sshd at ``host:port`` (key login)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507  (the lab's sshd)
    client.connect(
        host,
        port,
        username=username,
        key_filename=str(key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=10)
        chan.get_pty(term="xterm", width=WIDTH, height=HEIGHT)
        chan.invoke_shell()
        return drive(chan, script)
    finally:
        client.close()
