"""scp and sftp through the broker: only when granted; every file hashed and logged."""

from __future__ import annotations

import hashlib
import os

import pytest

from broker.frontdoor.context import FrontDoorOptions
from tests.frontdoor.harness import World, run


def _target(w: World) -> str:
    return w.login()


async def test_scp_refused_without_file_transfer_in_the_grant(granted: World) -> None:
    w = granted
    src = w.tmp / "update.bin"
    src.write_bytes(b"firmware")
    r = await run(w.ssh_argv("scp", extra=(str(src), f"{_target(w)}:update.bin")), w.env())
    assert r.rc != 0
    assert b"not part of your grant" in r.err
    assert not (w.data_dir / "update.bin").exists()
    refused = w.events.of_type("file.refused")
    assert refused and refused[0].get("EventResultDetails") == "no_grant"


async def test_sftp_refused_without_file_transfer_in_the_grant(granted: World) -> None:
    w = granted
    cert = f"CertificateFile={w.cert_file()}"
    r = await run(
        w.ssh_argv("sftp", extra=("-o", cert, "-b", "-", _target(w))), w.env(), stdin=b"ls\n"
    )
    assert r.rc != 0
    assert b"not part of your grant" in r.err
    assert w.events.of_type("file.refused")


async def test_scp_upload_and_download_are_logged_with_hashes(files_granted: World) -> None:
    w = files_granted
    payload = os.urandom(300_000)
    src = w.tmp / "qc-update.bin"
    src.write_bytes(payload)
    r = await run(w.ssh_argv("scp", extra=(str(src), f"{_target(w)}:qc-update.bin")), w.env())
    assert r.rc == 0, r.err
    assert (w.data_dir / "qc-update.bin").read_bytes() == payload
    w.clock.advance(30)
    back = w.tmp / "back.bin"
    r2 = await run(
        w.ssh_argv("scp", extra=("-O", f"{_target(w)}:qc-update.bin", str(back))), w.env()
    )
    assert r2.rc == 0, r2.err
    assert back.read_bytes() == payload
    moved = w.events.of_type("file.transferred")
    assert [(e.get("NetworkDirection"), e.details["tool"]) for e in moved] == [
        ("Inbound", "sftp"),
        ("Outbound", "scp"),
    ]
    digest = hashlib.sha256(payload).hexdigest()
    for e in moved:
        assert e.get("TargetFileSHA256") == digest
        assert e.get("TargetFileSize") == len(payload)
        assert e.get("TargetFileName").endswith("qc-update.bin")


async def test_sftp_put_get_and_listing(files_granted: World) -> None:
    w = files_granted
    src = w.tmp / "log-request.txt"
    src.write_text("please send logs\n")
    script = f"put {src} req.txt\nls\nget req.txt {w.tmp / 'copy.txt'}\nrm req.txt\n"
    cert = f"CertificateFile={w.cert_file()}"
    r = await run(
        w.ssh_argv("sftp", extra=("-o", cert, "-b", "-", _target(w))),
        w.env(),
        stdin=script.encode(),
    )
    assert r.rc == 0, r.err
    assert b"req.txt" in r.out
    assert (w.tmp / "copy.txt").read_text() == "please send logs\n"
    assert not (w.data_dir / "req.txt").exists()
    directions = [e.get("NetworkDirection") for e in w.events.of_type("file.transferred")]
    assert directions == ["Inbound", "Outbound"]


@pytest.fixture
def front_door_options(tmp_path: object) -> FrontDoorOptions:
    # the scan hook rejects any file containing the EICAR-like marker
    return FrontDoorOptions(
        login_timeout_s=5.0,
        watch_interval_s=0.1,
        scan_command=("sh", "-c", '! grep -q INFECTED "$0"'),
    )


async def test_scan_hook_rejects_a_file_going_into_the_hospital(files_granted: World) -> None:
    w = files_granted
    bad = w.tmp / "bad.bin"
    bad.write_bytes(b"xx INFECTED xx")
    good = w.tmp / "good.bin"
    good.write_bytes(b"clean")
    r = await run(w.ssh_argv("scp", extra=(str(bad), f"{_target(w)}:bad.bin")), w.env())
    assert r.rc != 0
    assert b"rejected by the hospital's file scan" in r.err
    assert not (w.data_dir / "bad.bin").exists() or (w.data_dir / "bad.bin").read_bytes() == b""
    w.clock.advance(30)
    r2 = await run(w.ssh_argv("scp", extra=(str(good), f"{_target(w)}:good.bin")), w.env())
    assert r2.rc == 0, r2.err
    refused = w.events.of_type("file.refused")[0]
    assert refused.details["scan"] == "rejected"
    assert refused.get("TargetFileSHA256") == hashlib.sha256(b"xx INFECTED xx").hexdigest()
    assert w.events.of_type("file.transferred")[0].details["scan"] == "clean"
