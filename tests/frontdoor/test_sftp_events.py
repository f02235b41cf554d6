"""Every change an engineer makes to the instrument's files over SFTP is an audit event.

remove, rename, symlink, chmod (setstat), mkdir and rmdir through stock
OpenSSH ``sftp -b``: each is a ``file.changed`` event with its ``operation``,
paths and result; without file transfer in the grant each attempt is a
``file.refused`` event and nothing changes on the instrument.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import paramiko
import pytest

from tests.frontdoor.harness import World, paramiko_client, run


async def _batch(w: World, script: str) -> bytes:
    cert = f"CertificateFile={w.cert_file()}"
    r = await run(
        w.ssh_argv("sftp", extra=("-o", cert, "-b", "-", w.login())), w.env(), stdin=script.encode()
    )
    assert r.rc == 0, r.err
    return r.err


def _changes(w: World) -> list[tuple[str, str, str]]:
    return [
        (e.details["operation"], Path(e.get("TargetFileName")).name, e.get("EventResult"))
        for e in w.events.of_type("file.changed")
    ]


async def test_sftp_changes_are_logged_with_operation_paths_and_result(
    files_granted: World,
) -> None:
    w = files_granted
    d = w.data_dir
    (d / "old.log").write_text("old\n")
    (d / "run.log").write_text("run\n")
    (d / "tool.sh").write_text("#!/bin/sh\n")
    await _batch(
        w,
        "rm old.log\nrename run.log run-1.log\nln -s run-1.log latest.log\n"
        "chmod 700 tool.sh\nmkdir exports\nrmdir exports\n-rm missing.log\n",
    )
    assert not (d / "old.log").exists()
    assert (d / "run-1.log").read_text() == "run\n"
    assert (d / "latest.log").is_symlink()
    assert (d / "tool.sh").stat().st_mode & 0o777 == 0o700
    assert _changes(w) == [
        ("remove", "old.log", "Success"),
        ("rename", "run-1.log", "Success"),
        ("symlink", "latest.log", "Success"),
        ("setstat", "tool.sh", "Success"),
        ("mkdir", "exports", "Success"),
        ("rmdir", "exports", "Success"),
        ("remove", "missing.log", "Failure"),
    ]
    by_op = {e.details["operation"]: e for e in w.events.of_type("file.changed")}
    assert Path(by_op["rename"].details["from_path"]).name == "run.log"
    assert by_op["symlink"].details["link_target"] == "run-1.log"
    assert by_op["setstat"].details["attrs"] == {"mode": "0700"}
    failed = w.events.of_type("file.changed")[-1]
    assert failed.get("EventResultDetails")  # the instrument's reason, e.g. "No such file"
    for e in w.events.of_type("file.changed"):
        # the same ASIM columns as the other file events
        assert e.get("ActorUsername") == "alice"
        assert e.get("TargetHostname") == w.instrument
        assert e.get("TargetSessionId") and e.get("GrantId") and e.get("HospitalId") == "h-1"
        assert e.get("NetworkApplicationProtocol") == "sftp"
        assert e.details["tool"] == "sftp"


async def test_changes_without_file_transfer_are_refused_and_logged(granted: World) -> None:
    """paramiko goes straight to REMOVE/RENAME/SYMLINK/SETSTAT/MKDIR on a denied channel."""
    w = granted
    d = w.data_dir
    (d / "keep.cfg").write_text("keep\n")
    t = await asyncio.to_thread(paramiko_client, w)
    try:
        sftp = await asyncio.to_thread(paramiko.SFTPClient.from_transport, t)
        assert sftp is not None
        chan = sftp.get_channel()
        assert chan is not None
        chan.settimeout(10)
        calls: list[tuple[Any, tuple[Any, ...]]] = [
            (sftp.remove, ("keep.cfg",)),
            (sftp.rename, ("keep.cfg", "gone.cfg")),
            (sftp.symlink, ("keep.cfg", "link.cfg")),
            (sftp.chmod, ("keep.cfg", 0o777)),
            (sftp.mkdir, ("newdir",)),
            (sftp.rmdir, ("somedir",)),
        ]
        for fn, args in calls:
            with pytest.raises(PermissionError, match="not part of your grant"):
                await asyncio.to_thread(fn, *args)
    finally:
        t.close()
    assert (d / "keep.cfg").read_text() == "keep\n"
    assert (d / "keep.cfg").stat().st_mode & 0o777 != 0o777
    assert not (d / "gone.cfg").exists() and not (d / "link.cfg").exists()
    assert not (d / "newdir").exists()
    refused = [e for e in w.events.of_type("file.refused") if e.details.get("operation")]
    assert [e.details["operation"] for e in refused] == [
        "remove",
        "rename",
        "symlink",
        "setstat",
        "mkdir",
        "rmdir",
    ]
    assert {e.get("EventResultDetails") for e in refused} == {"no_grant"}
    assert not w.events.of_type("file.changed")
