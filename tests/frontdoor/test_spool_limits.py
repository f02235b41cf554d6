"""Spools have a budget per session and per broker, and live apart from the audit log."""

from __future__ import annotations

import asyncio
import os
import stat

import paramiko
import pytest

from broker.frontdoor.context import FrontDoorOptions
from tests.frontdoor.harness import World, run, sftp_client

MIB = 1024 * 1024


@pytest.fixture
def front_door_options() -> FrontDoorOptions:
    return FrontDoorOptions(
        login_timeout_s=5.0,
        watch_interval_s=0.1,
        max_session_spool_bytes=MIB,
        max_spool_bytes=MIB + MIB // 2,
    )


def _write_all(f: paramiko.SFTPFile, total: int) -> None:
    done = 0
    while done < total:
        n = min(64 * 1024, total - done)
        f.write(b"x" * n)
        done += n
    f.flush()


async def test_sftp_upload_past_the_session_budget_is_refused_with_the_reason(
    files_granted: World,
) -> None:
    """Stock OpenSSH sftp: the engineer sees why, nothing lands, file.refused is logged."""
    w = files_granted
    src = w.tmp / "big.bin"
    src.write_bytes(os.urandom(MIB + 200_000))
    cert = f"CertificateFile={w.cert_file()}"
    r = await run(
        w.ssh_argv("sftp", extra=("-o", cert, "-b", "-", w.login())),
        w.env(),
        stdin=f"put {src} big.bin\n".encode(),
    )
    assert r.rc != 0
    assert b"spool limit of 1 MiB" in r.err
    assert not (w.data_dir / "big.bin").exists()
    (refused,) = w.events.of_type("file.refused")
    assert refused.get("EventResultDetails") == "spool_full"
    assert refused.get("NetworkDirection") == "Inbound"
    assert not w.events.of_type("file.transferred")
    assert w.door.spools.used == 0


async def test_download_past_the_session_budget_is_refused(files_granted: World) -> None:
    w = files_granted
    (w.data_dir / "trace.log").write_bytes(os.urandom(MIB + 100_000))
    t, sftp = await sftp_client(w)
    try:
        with pytest.raises(OSError, match="spool limit"):
            await asyncio.to_thread(sftp.open, "trace.log", "rb")
    finally:
        t.close()
    (refused,) = w.events.of_type("file.refused")
    assert refused.get("EventResultDetails") == "spool_full"
    assert refused.get("NetworkDirection") == "Outbound"
    assert w.door.spools.used == 0


async def test_the_broker_budget_holds_across_sessions(files_granted: World) -> None:
    """Two sessions, each under its own budget, together over the broker's: the second
    is refused; once the first is closed there is room again."""
    w = files_granted
    t1, s1 = await sftp_client(w)
    w.clock.advance(30)  # a TOTP code is accepted once: the second login takes the next one
    t2, s2 = await sftp_client(w)
    try:
        f1 = await asyncio.to_thread(s1.open, "a.bin", "wb")
        await asyncio.to_thread(_write_all, f1, 800 * 1024)
        f2 = await asyncio.to_thread(s2.open, "b.bin", "wb")
        with pytest.raises(OSError, match="spool is full"):
            await asyncio.to_thread(_write_all, f2, 800 * 1024)
        await asyncio.to_thread(f2.close)  # refused earlier: lands nothing, frees its spool
        await asyncio.to_thread(f1.close)
        assert (w.data_dir / "a.bin").stat().st_size == 800 * 1024
        f3 = await asyncio.to_thread(s2.open, "c.bin", "wb")
        await asyncio.to_thread(_write_all, f3, 800 * 1024)
        await asyncio.to_thread(f3.close)
    finally:
        t1.close()
        t2.close()
    assert not (w.data_dir / "b.bin").exists()
    assert (w.data_dir / "c.bin").stat().st_size == 800 * 1024
    reasons = [e.get("EventResultDetails") for e in w.events.of_type("file.refused")]
    assert reasons == ["spool_full"]


async def test_spools_live_in_their_own_private_directory(files_granted: World) -> None:
    """<data_dir>/spools, mode 0700, not the audit directory; nothing stays behind."""
    w = files_granted
    t, sftp = await sftp_client(w)
    try:
        f = await asyncio.to_thread(sftp.open, "small.txt", "wb")
        await asyncio.to_thread(f.write, b"hello")
        await asyncio.to_thread(f.flush)
        spool_dir = w.door.options.spool_dir
        assert spool_dir == w.tmp / "data" / "spools"
        assert "audit" not in spool_dir.parts
        assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
        assert os.listdir(spool_dir) == []  # unlinked at creation: nothing to leave behind
        await asyncio.to_thread(f.close)
    finally:
        t.close()
    assert (w.data_dir / "small.txt").read_bytes() == b"hello"
    assert w.door.spools.used == 0
