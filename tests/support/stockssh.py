"""Stock OpenSSH as the engineer runs it against a demo broker: the engineer's key,
the TOTP code answered by an askpass script (``SSH_ASKPASS_REQUIRE=force``), no user
configuration (``-F /dev/null``), a known-hosts file of the test's own."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def engineer_ssh(
    root: Path,
    env: Mapping[str, str],
    code: str,
    port: int,
    target: str,
    command: str,
    *,
    known_hosts: Path | None = None,
    strict: str = "accept-new",
    connect_timeout_s: int = 10,
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) for ``ssh target command`` on 127.0.0.1:``port``, signed in
    with ``root/engineer/id_ed25519`` and answering the TOTP prompt with ``code``
    (written to ``root/code.txt``, which a test may rewrite before the prompt)."""
    code_file, askpass = root / "code.txt", root / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\ncat {code_file}\n")
    askpass.chmod(0o700)
    code_file.write_text(code + "\n")
    argv = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(root / "engineer" / "id_ed25519"),
        "-o",
        f"UserKnownHostsFile={known_hosts or root / 'known_hosts'}",
        "-o",
        f"StrictHostKeyChecking={strict}",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=no",
        "-o",
        f"ConnectTimeout={connect_timeout_s}",
        "-p",
        str(port),
        f"{target}@127.0.0.1",
        command,
    ]
    answers = {"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": "none"}
    return argv, {**env, **answers}
