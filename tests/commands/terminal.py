"""Stock OpenSSH ``ssh -tt`` through the broker, driven like a person at a terminal."""

from __future__ import annotations

import os
import select
import subprocess
from dataclasses import replace

from bench.commands_corpus import HEIGHT, WIDTH, Capture, Terminal
from tests.frontdoor.harness import World


class SshTerminal(Terminal):
    """``ssh -tt user+instrument@broker``; what is sent and read is captured."""

    def __init__(self, w: World, capture: Capture | None = None) -> None:
        argv = w.ssh_argv(extra=("-tt", w.login()))
        env = w.env() | {"COLUMNS": str(WIDTH), "LINES": str(HEIGHT), "TERM": "xterm"}
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.capture = capture or Capture("ssh", WIDTH, HEIGHT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.capture.chunks.append(("i", data))
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self, timeout: float) -> bytes | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        return os.read(fd, 65536)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def with_rules(w: World, rules: tuple[dict[str, str], ...], *, record_input: bool = False) -> None:
    target = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(
        target, command_rules=rules, record_input=record_input
    )
