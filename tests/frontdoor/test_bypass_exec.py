"""File transfer through exec: the known transfer programs are refused; whatever else
passes is recorded byte for byte (stdin and stdout), and the hash covers it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
from datetime import timedelta
from pathlib import Path

import pytest

from broker.frontdoor.raw_paths import transfer_program
from tests.frontdoor.harness import World, run

SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def _streams(path: Path) -> tuple[bytes, bytes]:
    """(stdin, output) put back together from an exec recording."""
    lines = path.read_text().splitlines()[1:]
    got = {"i": bytearray(), "o": bytearray()}
    for line in lines:
        _, code, data = json.loads(line)
        if code in ("i", "o"):
            got[code] += data.encode("utf-8")
        elif code in ("I", "O"):
            got[code.lower()] += base64.b64decode(data)
    return bytes(got["i"]), bytes(got["o"])


def _ssh(w: World) -> str:
    """The ``ssh`` command line rsync uses to reach the broker (certificate login)."""
    argv = w.ssh_argv(batch=True, extra=("-o", f"CertificateFile={w.cert_file()}"))
    return shlex.join(argv)


async def test_sftp_with_an_exec_d_sftp_server_is_refused_without_file_transfer(
    granted: World,
) -> None:
    """``sftp -s /usr/lib/openssh/sftp-server`` (an exec, not the sftp subsystem)."""
    w = granted
    (w.tmp / "blob").write_bytes(b"unscanned")
    r = await run(
        w.ssh_argv(
            "sftp",
            extra=(
                "-o",
                f"CertificateFile={w.cert_file()}",
                "-s",
                SFTP_SERVER,
                "-b",
                "-",
                w.login(),
            ),
        ),
        w.env(),
        stdin=f"put {w.tmp / 'blob'} landed.bin\n".encode(),
    )
    assert r.rc != 0
    assert b"not part of your grant: sftp-server is refused" in r.err
    assert not (w.data_dir / "landed.bin").exists()
    (refused,) = w.events.of_type("file.refused")
    assert refused.get("EventResultDetails") == "transfer_by_exec"
    assert refused.details["command"] == SFTP_SERVER
    assert not w.events.of_type("session.started")


async def test_rsync_over_ssh_is_refused_without_file_transfer(granted: World) -> None:
    w = granted
    src = w.tmp / "update.bin"
    src.write_bytes(os.urandom(10_000))
    r = await run(["rsync", "-e", _ssh(w), str(src), f"{w.login()}:update.bin"], w.env())
    assert r.rc != 0
    assert b"rsync is refused" in r.err
    assert not (w.data_dir / "update.bin").exists()
    (refused,) = w.events.of_type("file.refused")
    assert refused.details["command"].startswith("rsync --server")


async def test_exec_d_sftp_server_is_refused_even_with_file_transfer(world: World) -> None:
    """With file transfer granted, the checked path is sftp/scp; an exec'd server would
    bypass the scan and the file.transferred events."""
    w = world
    w.policy.grant(
        w.engineer, w.instrument, (w.ssh_port,), ends=w.clock.now + timedelta(hours=1), files=True
    )
    r = await run(w.ssh_argv(extra=(w.login(), f"exec {SFTP_SERVER}")), w.env())
    assert r.rc == 1
    assert b"use sftp or scp" in r.err
    assert w.events.of_type("file.refused")[0].get("EventResultDetails") == "transfer_by_exec"


async def test_cat_upload_is_recorded_byte_exact_and_hashed(granted: World) -> None:
    """``ssh host 'cat > f' < blob`` is not a known transfer program: it runs, as a
    recorded exec whose recording holds every byte of the blob (binary included)."""
    w = granted
    blob = os.urandom(200_000) + "データ\n".encode() + bytes(range(256))
    r = await run(w.ssh_argv(extra=(w.login(), "cat > blob.bin")), w.env(), stdin=blob)
    assert r.rc == 0, r.err
    assert (w.data_dir / "blob.bin").read_bytes() == blob
    (ended,) = w.events.of_type("session.ended")
    path = w.tmp / "recordings" / ended.details["recording"]
    data = path.read_bytes()
    assert ended.get("RecordingSHA256") == hashlib.sha256(data).hexdigest()
    assert ended.get("RecordingSize") == len(data)
    stdin, _ = _streams(path)
    assert stdin == blob
    # the download the other way is in the recording just as exactly
    w.clock.advance(30)
    r = await run(w.ssh_argv(extra=(w.login(), "cat blob.bin")), w.env())
    assert r.rc == 0 and r.out == blob
    ended = w.events.of_type("session.ended")[1]
    _, out = _streams(w.tmp / "recordings" / ended.details["recording"])
    assert out == blob


@pytest.mark.parametrize(
    ("command", "program"),
    [
        (SFTP_SERVER, "sftp-server"),
        ("/usr/libexec/openssh/sftp-server -e", "sftp-server"),
        ("internal-sftp", "internal-sftp"),
        ("sftp", "sftp"),
        ("LANG=C nice -n 5 sudo -u root exec /usr/lib/sftp-server", "sftp-server"),
        ("sh -c '/usr/lib/openssh/sftp-server'", "sftp-server"),
        ('bash -lc "cd /tmp && exec sftp-server"', "sftp-server"),
        ("su - root -c 'scp -f /etc/passwd'", "scp"),
        ("/usr/bin/scp -prt /data", "scp"),
        ("rsync --server -vlogDtpre.iLsfxCIvu . /tmp/x", "rsync"),
        ("cd /tmp; rsync --server --sender -e.LsfxC . x", "rsync"),
        ("env -i PATH=/bin timeout 30 sftp-server", "sftp-server"),
        ("find / -name x -exec /usr/lib/openssh/sftp-server ';'", "sftp-server"),
        ("eval sftp-server", "sftp-server"),
        ("/usr/lib/openssh/sftp-serv*", "sftp-server"),
        ("s\\ftp-server", "sftp-server"),
        ("sz report.csv", "sz"),
        ("echo start\nsz report.csv", "sz"),
        ("{ sz report.csv; }", "sz"),
        ("if true; then rz; fi", "rz"),
        ("while true; do /usr/bin/scp -t /tmp; done", "scp"),
    ],
)
def test_transfer_programs_are_recognised(command: str, program: str) -> None:
    found = transfer_program(command)
    assert found is not None and found.program == program and not found.unresolved


@pytest.mark.parametrize(
    "command", ["p=/usr/lib/openssh/sftp-server; $p", "`which sftp-server`", "'unbalanced"]
)
def test_commands_whose_program_is_unknown_are_unresolved(command: str) -> None:
    found = transfer_program(command)
    assert found is not None and found.unresolved


@pytest.mark.parametrize(
    "command",
    [
        "echo out; echo err >&2; exit 3",
        "cat > f",
        "sleep 300",
        "tar xf -",
        "sh",
        "grep sftp /var/log/auth.log",
        "ls -l > scp",
        "rsync -a /data /backup",
        "scp a b",
    ],
)
def test_ordinary_commands_pass(command: str) -> None:
    assert transfer_program(command) is None
