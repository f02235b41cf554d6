"""An upload lands only on an explicit CLOSE while access is live; never after it ends.

Terminating a session, revoking its grant or dropping the connection in the
middle of an upload leaves the instrument's file system as it was: no new
file, and a file already there byte-identical.  The spools go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
from pathlib import Path

import asyncssh
import paramiko
import pytest

from audit.testing import CapturingEmitter
from broker.access import totp
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.frontdoor.context import FrontDoorOptions
from broker.frontdoor.door import start_front_door
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.store.directory import StoreAccessPolicy
from broker.tunnel.connector import DirectConnector
from labsim.sshd import OpenSSHInstrument
from tests.control.conftest import T0 as CONTROL_T0
from tests.control.conftest import build_world, make_context
from tests.frontdoor.harness import World, sftp_client
from tests.frontdoor.realstack import instrument_behind_gateway
from tests.support import FakeClock, poll


@pytest.fixture
def front_door_options() -> FrontDoorOptions:
    # the watcher never ticks in these tests: what stops an upload is the check at CLOSE
    return FrontDoorOptions(login_timeout_s=5.0, watch_interval_s=3600.0)


def _live_sid(w: World) -> str:
    (s,) = w.door.sessions.list()
    return s.session_id


def _spool_fds(w: World) -> list[str]:
    """Open file descriptors of this process that point into the broker's spool dir."""
    spool_dir = str(w.door.options.spool_dir)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd may close meanwhile
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(spool_dir):
                found.append(target)
    return found


async def test_terminated_upload_never_lands(files_granted: World) -> None:
    """paramiko writes half a file; an approver terminates the session; nothing lands."""
    w = files_granted
    t, sftp = await sftp_client(w)
    try:
        f = await asyncio.to_thread(sftp.open, "firmware.bin", "wb")
        await asyncio.to_thread(f.write, os.urandom(2 * 1024 * 1024))
        await asyncio.to_thread(f.flush)
        await poll(lambda: w.door.spools.used >= 2 * 1024 * 1024, deadline_s=10)
        assert _spool_fds(w), "the upload is spooled in <data_dir>/spools"
        assert w.door.sessions.terminate(_live_sid(w), by="approver", reason="terminated")
        await poll(lambda: bool(w.events.of_type("session.ended")), deadline_s=10)
    finally:
        t.close()
    assert not (w.data_dir / "firmware.bin").exists()
    assert not [p for p in w.data_dir.iterdir() if p.name.endswith(".part")]
    assert not w.events.of_type("file.transferred")
    refused = w.events.of_type("file.refused")
    assert [e.get("EventResultDetails") for e in refused] == ["session_ended"]
    assert w.door.spools.used == 0
    assert _spool_fds(w) == []


async def test_upload_closed_after_the_grant_was_revoked_never_lands(files_granted: World) -> None:
    """The grant is revoked in the store; the client's explicit CLOSE is refused at once,
    before the watcher has ended the session."""
    w = files_granted
    t, sftp = await sftp_client(w)
    try:
        f = await asyncio.to_thread(sftp.open, "settings.ini", "wb")
        await asyncio.to_thread(f.write, b"[calibration]\nslope=1.02\n")
        await asyncio.to_thread(f.flush)
        (grant,) = w.policy.grants
        w.policy.revoke(grant.grant_id)
        await asyncio.to_thread(f.close)  # paramiko swallows the CLOSE's failure status
        # the connection stays up: the engineer can still see what is there
        assert "settings.ini" not in await asyncio.to_thread(sftp.listdir, ".")
    finally:
        t.close()
    assert not (w.data_dir / "settings.ini").exists()
    (refused,) = w.events.of_type("file.refused")
    assert refused.get("EventResultDetails") == "no_grant"
    assert refused.details["operation"] == "upload"
    assert not w.events.of_type("file.transferred")


async def test_dropped_connection_leaves_the_existing_file_byte_identical(
    files_granted: World,
) -> None:
    """paramiko overwrites an existing file, writes part of it, then drops TCP without CLOSE."""
    w = files_granted
    target = w.data_dir / "qc.cfg"
    original = os.urandom(100_000)
    target.write_bytes(original)
    t, sftp = await sftp_client(w)
    f = await asyncio.to_thread(sftp.open, "qc.cfg", "wb")
    await asyncio.to_thread(f.write, b"half a new file")
    await asyncio.to_thread(f.flush)
    await poll(lambda: w.door.spools.used > 0, deadline_s=10)
    sock = t.sock
    sock.close()  # the engineer's network goes away: no CLOSE, no channel close
    await poll(lambda: bool(w.events.of_type("session.ended")), deadline_s=10)
    t.close()
    assert target.read_bytes() == original
    assert not [p for p in w.data_dir.iterdir() if p.name.endswith(".part")]
    assert [e.get("EventResultDetails") for e in w.events.of_type("file.refused")] == ["not_closed"]
    assert w.door.spools.used == 0


async def test_explicit_close_while_granted_replaces_the_file_whole(files_granted: World) -> None:
    """The normal path: the file is written beside the target and renamed over it."""
    w = files_granted
    target = w.data_dir / "qc.cfg"
    target.write_bytes(b"old")
    target.chmod(0o640)
    t, sftp = await sftp_client(w)
    try:
        new = os.urandom(600_000)
        await asyncio.to_thread(sftp.putfo, io.BytesIO(new), "qc.cfg")
    finally:
        t.close()
    assert target.read_bytes() == new
    assert target.stat().st_mode & 0o777 == 0o640  # the target keeps its mode
    assert not [p for p in w.data_dir.iterdir() if p.name.endswith(".part")]
    (moved,) = w.events.of_type("file.transferred")
    assert moved.get("TargetFileSize") == len(new)


async def _start(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def _terminate_mid_upload(w: World, argv: list[str], name: str) -> bytes:
    """Start a rate-limited OpenSSH upload, terminate the session once bytes are spooled."""
    proc = await _start(argv, w.env())
    try:
        await poll(lambda: w.door.spools.used > 0, deadline_s=15)
        assert w.door.sessions.terminate(_live_sid(w), by="approver", reason="terminated")
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode != 0
    await poll(lambda: bool(w.events.of_type("session.ended")), deadline_s=10)
    assert not (w.data_dir / name).exists()
    assert not w.events.of_type("file.transferred")
    assert w.door.spools.used == 0
    return err


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-sftp-protocol", "scp-O"])
async def test_terminated_scp_upload_never_lands(files_granted: World, legacy: bool) -> None:
    w = files_granted
    src = w.tmp / "image.bin"
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    extra = ("-O",) if legacy else ()
    argv = w.ssh_argv("scp", extra=(*extra, "-l", "2000", str(src), f"{w.login()}:image.bin"))
    await _terminate_mid_upload(w, argv, "image.bin")


async def test_terminated_sftp_put_never_lands(files_granted: World, tmp_path: Path) -> None:
    w = files_granted
    src = w.tmp / "bundle.tar"
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    batch = tmp_path / "batch"
    batch.write_text(f"put {src} bundle.tar\n")
    argv = w.ssh_argv(
        "sftp",
        extra=("-o", f"CertificateFile={w.cert_file()}", "-l", "2000", "-b", str(batch), w.login()),
    )
    await _terminate_mid_upload(w, argv, "bundle.tar")


async def test_grant_revoked_in_the_store_stops_an_open_upload(
    tmp_path: Path,
    openssh_instrument: OpenSSHInstrument,
) -> None:
    """The real control plane: the hospital revokes the grant while paramiko has a file
    half written; the file never reaches the instrument, whatever the client does next."""
    events = CapturingEmitter()
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}", migrate=True)
    clock = FakeClock(CONTROL_T0)
    cw = build_world(Services.build(make_context(store, events, clock)), clock)
    inst = openssh_instrument
    key_path, secret = instrument_behind_gateway(cw, inst, tmp_path)
    cw.s.estate.update_policy(
        cw.actors["hadmin"], "hoshi-hospital", {"file_transfer_allowed": True}
    )
    req = cw.s.requests.create(
        cw.actors["eng"],
        NewRequest(["cobas-1"], 3600, "update QC file", ports=[inst.port], file_transfer=True),
    )
    grant = (
        cw.s.requests.approve(cw.actors["appr"], req.id).grant
        or cw.s.requests.approve(cw.actors["appr2"], req.id).grant
    )
    assert grant is not None
    door = await start_front_door(
        BrokerSettings(data_dir=tmp_path / "data"),
        StoreAccessPolicy(cw.s),
        DirectConnector(),
        events,
        tmp_path / "recordings",
        asyncssh.generate_private_key("ssh-ed25519"),
        options=FrontDoorOptions(watch_interval_s=3600.0),
        clock=cw.clock,
        host="127.0.0.1",
        port=0,
    )

    def connect() -> paramiko.Transport:
        t = paramiko.Transport(("127.0.0.1", door.port))
        t.start_client(timeout=10)
        key = paramiko.Ed25519Key.from_private_key_file(str(key_path))
        assert t.auth_publickey("eng+cobas-1", key) == ["keyboard-interactive"]
        code = totp.code_at(secret, cw.clock())
        t.auth_interactive("eng+cobas-1", lambda _t, _i, prompts: [code for _ in prompts])
        return t

    target = inst.data_dir / "qc.cfg"
    target.write_bytes(b"calibrated\n")
    t = await asyncio.to_thread(connect)
    try:
        sftp = await asyncio.to_thread(paramiko.SFTPClient.from_transport, t)
        assert sftp is not None
        f = await asyncio.to_thread(sftp.open, "qc.cfg", "wb")
        await asyncio.to_thread(f.write, b"tampered\n")
        await asyncio.to_thread(f.flush)
        cw.s.grants.revoke(cw.actors["appr"], grant.id, "work done")
        await asyncio.to_thread(f.close)
    finally:
        t.close()
        await door.close()
        store.close()
    assert target.read_bytes() == b"calibrated\n"
    refused = [e for e in events.of_type("file.refused") if e.details.get("operation") == "upload"]
    assert [e.get("EventResultDetails") for e in refused] == ["no_grant"]
    assert not events.of_type("file.transferred")


async def test_scp_killed_mid_file_leaves_the_existing_file_byte_identical(
    files_granted: World,
) -> None:
    """Legacy scp (-O): the scp process dies mid-file, its ssh sends EOF on the channel
    while the grant is live; the half-received file is not written over the old one."""
    w = files_granted
    target = w.data_dir / "method.xml"
    original = b"<method version='7'/>\n" * 1000
    target.write_bytes(original)
    src = w.tmp / "method.xml"
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    argv = w.ssh_argv("scp", extra=("-O", "-l", "2000", str(src), f"{w.login()}:method.xml"))
    proc = await _start(argv, w.env())
    try:
        await poll(lambda: w.door.spools.used > 0, deadline_s=15)
        os.kill(proc.pid, signal.SIGKILL)  # scp only: its ssh child sees EOF and says so
        await poll(lambda: bool(w.events.of_type("session.ended")), deadline_s=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    assert target.read_bytes() == original
    assert not [p for p in w.data_dir.iterdir() if p.name.endswith(".part")]
    assert not w.events.of_type("file.transferred")
    assert [e.get("EventResultDetails") for e in w.events.of_type("file.refused")] == ["not_closed"]
    assert w.door.spools.used == 0
