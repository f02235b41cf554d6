"""The engineer's stock ``ssh`` through one replica's front door, as the replica tests
drive it: the engineer's key, the TOTP code answered by an askpass script, no user
configuration, the cluster's known-hosts file.  Without ``command`` it is an
interactive shell (``-tt``, lines typed on its stdin); with one, a remote command.
Its output (stdout and stderr) is kept in a file of its own."""

from __future__ import annotations

import itertools
import subprocess

from tests.replicas.cluster import INSTRUMENT, Cluster

_numbers = itertools.count(1)


class Shell:
    def __init__(
        self,
        d: Cluster,
        code: str,
        replica: str,
        *,
        command: str | None = None,
        user: str = "tanaka",
        instrument: str = INSTRUMENT,
    ) -> None:
        n = next(_numbers)
        code_file = d.root / f"shell-{n}-code.txt"
        askpass = d.root / f"shell-{n}-askpass.sh"
        askpass.write_text(f"#!/bin/sh\ncat {code_file}\n")
        askpass.chmod(0o700)
        code_file.write_text(code + "\n")
        self.out = d.root / f"shell-{n}-{replica}.out"
        env = {
            **d.env(user),
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": "none",
        }
        argv = [
            "ssh",
            *(["-tt"] if command is None else []),
            "-F",
            "/dev/null",
            "-i",
            str(d.root / "engineer" / "id_ed25519"),
            "-o",
            f"UserKnownHostsFile={d.root / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=no",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(d.replicas[replica].ssh_port),
            f"{user}+{instrument}@127.0.0.1",
            *([] if command is None else [command]),
        ]
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.PIPE if command is None else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def text(self) -> str:
        """Everything the engineer's terminal showed so far."""
        return self.out.read_text(errors="replace")

    def seen(self, text: str) -> bool:
        return text.encode() in self.out.read_bytes()

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
