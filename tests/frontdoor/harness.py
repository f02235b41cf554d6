"""Test harness for the front door: a fake access policy, a fake clock, an
OpenSSH client runner and a paramiko engineer."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pyotp

from audit import new_event
from audit.testing import CapturingEmitter
from broker.access.door import Engineer, GrantEnd, GrantView, InstrumentTarget, TotpResult
from broker.frontdoor.door import FrontDoor
from tests.support import FakeClock

T0 = datetime(2026, 11, 24, 9, 0, 0, tzinfo=UTC)
LOCK_AFTER = 5
LOCK_WINDOW = timedelta(minutes=15)


@dataclass
class FakePolicy:
    """In-memory AccessPolicy with the control plane's documented behaviour."""

    engineers: dict[str, tuple[Engineer, str, str, bool]] = field(default_factory=dict)
    grants: list[GrantView] = field(default_factory=list)
    instruments: dict[str, InstrumentTarget] = field(default_factory=dict)
    used_codes: set[tuple[str, int]] = field(default_factory=set)
    failures: dict[str, list[datetime]] = field(default_factory=dict)
    locked: dict[str, datetime] = field(default_factory=dict)
    certs: dict[int, tuple[str, bool]] = field(default_factory=dict)  # serial: user, revoked
    events: CapturingEmitter | None = None  # the domain's own events (mfa, lockout)

    def add_engineer(
        self, username: str, public_line: str, roles: frozenset[str] = frozenset({"engineer"})
    ) -> tuple[Engineer, str]:
        eng = Engineer(
            user_id=f"u-{username}",
            username=username,
            organization="Roche",
            roles=roles,
            org_kind="vendor",
        )
        secret = pyotp.random_base32()
        self.engineers[username] = (eng, " ".join(public_line.split()[:2]), secret, True)
        return eng, secret

    def forget_key(self, username: str) -> None:
        eng, _, secret, active = self.engineers[username]
        self.engineers[username] = (eng, "ssh-ed25519 AAAAother", secret, active)

    def set_source_cidrs(self, username: str, cidrs: tuple[str, ...]) -> None:
        eng, key, secret, active = self.engineers[username]
        self.engineers[username] = (replace(eng, source_cidrs=cidrs), key, secret, active)

    def deactivate(self, username: str) -> None:
        eng, key, secret, _ = self.engineers[username]
        self.engineers[username] = (eng, key, secret, False)

    def engineer_for_key(self, username: str, openssh_public_key: str) -> Engineer | None:
        row = self.engineers.get(username)
        if row is None or not row[3]:
            return None
        return row[0] if " ".join(openssh_public_key.split()[:2]) == row[1] else None

    def _emit(self, type_: str, now: datetime, **cols: object) -> None:
        if self.events is not None:
            self.events.emit(new_event(type_, clock=lambda: now, **cols))  # type: ignore[arg-type]

    def check_totp(
        self,
        user_id: str,
        code: str,
        now: datetime,
        *,
        src_ip: str | None = None,
        hospital_id: str | None = None,
    ) -> TotpResult:
        r = self._check_totp(user_id, code, now)
        if r.ok or r.reason == "locked":
            return r
        eng = next(e[0] for e in self.engineers.values() if e[0].user_id == user_id)
        cols = {
            "ActorUserId": user_id,
            "ActorUsername": eng.username,
            "SrcIpAddr": src_ip,
            "HospitalId": hospital_id,
            "EventResult": "Failure",
        }
        if r.locked_now:
            self._emit(
                "user.locked_out",
                now,
                details={
                    "failures": r.failures,
                    "window_s": int(LOCK_WINDOW.total_seconds()),
                    "locked_until": r.locked_until.isoformat() if r.locked_until else None,
                },
                **cols,
            )
            self._emit(
                "alert.raised",
                now,
                details={"alert": "user.locked_out", "reason": "too many failed sign-ins"},
                **{**cols, "EventResult": "Success"},
            )
        self._emit(
            "user.mfa_failed",
            now,
            EventResultDetails=r.reason,
            details={"method": "totp", "failures": r.failures},
            **cols,
        )
        return r

    def hospital_of(self, instrument: str) -> str | None:
        target = self.instruments.get(instrument)
        return target.hospital_id if target is not None else None

    def record_cert(
        self, user_id: str, serial: int, issued_at: datetime, valid_until: datetime
    ) -> None:
        self.certs[serial] = (user_id, False)

    def revoke_certs(self, user_id: str) -> None:
        self.certs = {k: (u, r or u == user_id) for k, (u, r) in self.certs.items()}

    def cert_usable(self, user_id: str, serial: int, now: datetime) -> str | None:
        until = self.locked.get(user_id)
        if until is not None and now < until:
            return f"account locked until {until:%H:%M} UTC"
        if not self._active(user_id):
            return "account inactive or expired"
        row = self.certs.get(serial)
        if row is None or row[0] != user_id:
            return "certificate unknown to this broker"
        return "certificate revoked (signed out or credentials revoked)" if row[1] else None

    def _check_totp(self, user_id: str, code: str, now: datetime) -> TotpResult:
        row = next(r for r in self.engineers.values() if r[0].user_id == user_id)
        until = self.locked.get(user_id)
        if until is not None and now < until:
            return TotpResult(False, "locked", LOCK_AFTER, False, until)
        totp = pyotp.TOTP(row[2])
        step = int(now.timestamp()) // 30
        valid = totp.verify(code, for_time=now, valid_window=1)
        if valid and (user_id, step) not in self.used_codes:
            self.used_codes.add((user_id, step))
            return TotpResult(True)
        reason = "replayed" if totp.verify(code, for_time=now, valid_window=1) else "wrong"
        recent = [t for t in self.failures.get(user_id, []) if now - t < LOCK_WINDOW] + [now]
        self.failures[user_id] = recent
        if len(recent) >= LOCK_AFTER:
            self.locked[user_id] = now + LOCK_WINDOW
            return TotpResult(False, reason, len(recent), True, now + LOCK_WINDOW)
        return TotpResult(False, reason, len(recent))

    def grant(
        self,
        eng: Engineer,
        instrument: str,
        ports: tuple[int, ...],
        *,
        ends: datetime,
        files: bool = False,
    ) -> GrantView:
        g = GrantView(
            grant_id=f"g{len(self.grants) + 1}",
            user_id=eng.user_id,
            instrument=instrument,
            ports=ports,
            ends=ends,
            file_transfer=files,
            hospital_id="h-1",
        )
        self.grants.append(g)
        return g

    def revoke(self, grant_id: str) -> None:
        self.grants = [g for g in self.grants if g.grant_id != grant_id]

    def set_end(self, grant_id: str, ends: datetime) -> None:
        self.grants = [replace(g, ends=ends) if g.grant_id == grant_id else g for g in self.grants]

    def _active(self, user_id: str) -> bool:
        return any(r[0].user_id == user_id and r[3] for r in self.engineers.values())

    def find_grant(
        self, user_id: str, instrument: str, port: int, now: datetime
    ) -> GrantView | None:
        if not self._active(user_id):
            return None
        for g in self.grants:
            if (
                g.user_id == user_id
                and g.instrument == instrument
                and port in g.ports
                and now < g.ends
            ):
                return g
        return None

    def grant_end(self, grant_id: str, user_id: str, now: datetime) -> GrantEnd:
        if not self._active(user_id):
            return GrantEnd(None, "engineer_inactive")
        for g in self.grants:
            if g.grant_id == grant_id and g.user_id == user_id:
                return GrantEnd(g.ends) if now < g.ends else GrantEnd(None, "grant_expired")
        return GrantEnd(None, "grant_revoked")

    def instrument(self, name: str) -> InstrumentTarget | None:
        return self.instruments.get(name)


@dataclass
class World:
    """One running front door with a real sshd instrument behind it."""

    door: FrontDoor
    policy: Any  # FakePolicy, or tests.frontdoor.store_policy.StorePolicy (the real one)
    clock: FakeClock
    events: CapturingEmitter
    tmp: Path
    key_path: Path  # the engineer's private key (OpenSSH format)
    public_line: str
    engineer: Engineer
    totp_secret: str
    known_hosts: Path
    askpass: Path
    instrument: str
    ssh_port: int  # the instrument's sshd port
    data_dir: Path  # the instrument's data directory (what sessions start in)

    def code(self, offset_steps: int = 0) -> str:
        at = self.clock.now + timedelta(seconds=30 * offset_steps)
        return str(pyotp.TOTP(self.totp_secret).at(at))

    def cert_file(self, serial: int = 1) -> Path:
        """A user certificate as ``hoshu login`` issues it (for batch tools like sftp -b)."""
        assert self.door.ca is not None
        self.policy.record_cert(
            self.engineer.user_id, serial, self.clock.now, self.clock.now + timedelta(hours=8)
        )
        cert = self.door.ca.issue(
            self.public_line,
            username=self.engineer.username,
            user_id=self.engineer.user_id,
            now=self.clock.now,
            grants_end=None,
            serial=serial,
            emitter=self.events,
        )
        path = self.tmp / "id_engineer-cert.pub"
        path.write_text(cert + "\n")
        return path

    def ssh_argv(
        self, tool: str = "ssh", *, batch: bool = False, extra: tuple[str, ...] = ()
    ) -> list[str]:
        port_flag = "-P" if tool in ("scp",) else "-p"
        if tool == "sftp":
            port_flag = "-P"
        argv = [
            tool,
            "-F",
            "/dev/null",
            port_flag,
            str(self.door.port),
            "-i",
            str(self.key_path),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "NumberOfPasswordPrompts=1",
        ]
        if batch:
            argv += ["-o", "BatchMode=yes"]
        return argv + list(extra)

    def env(self, code: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SSH_ASKPASS": str(self.askpass),
                "SSH_ASKPASS_REQUIRE": "force",
                "DISPLAY": ":0",
                "HOSHU_TEST_CODE": code if code is not None else self.code(),
            }
        )
        env.pop("SSH_AUTH_SOCK", None)
        return env

    def login(self, instrument: str | None = None) -> str:
        inst = self.instrument if instrument is None else instrument
        return (
            f"{self.engineer.username}+{inst}@127.0.0.1"
            if inst
            else f"{self.engineer.username}@127.0.0.1"
        )


@dataclass
class Result:
    rc: int
    out: bytes
    err: bytes
    seconds: float


async def run(
    argv: list[str], env: dict[str, str], *, stdin: bytes = b"", timeout: float = 20.0
) -> Result:
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Result(proc.returncode or 0, out, err, time.monotonic() - start)


def paramiko_client(
    world: World, instrument: str | None = None, code: str | None = None
) -> paramiko.Transport:
    """Log in with paramiko: public key (partial success), then TOTP by keyboard-interactive."""
    t = paramiko.Transport(("127.0.0.1", world.door.port))
    t.banner_timeout = 10
    t.start_client(timeout=10)
    key = paramiko.Ed25519Key.from_private_key_file(str(world.key_path))
    login = world.login(instrument).split("@")[0]
    remaining = t.auth_publickey(login, key)
    assert remaining == ["keyboard-interactive"], remaining
    answer = world.code() if code is None else code
    t.auth_interactive(login, lambda _t, _i, prompts: [answer for _ in prompts])
    return t


def engineer_key(tmp: Path) -> tuple[Path, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp / "id_engineer"
    key.write_private_key(path)
    path.chmod(0o600)
    line = key.export_public_key().decode().strip()
    (tmp / "id_engineer.pub").write_text(line + "\n")
    return path, line


def open_shell(t: paramiko.Transport, width: int = 80, height: int = 24) -> paramiko.Channel:
    chan = t.open_session(timeout=10)
    chan.get_pty(term="xterm", width=width, height=height)
    chan.invoke_shell()
    chan.settimeout(10)
    return chan


def read_until(chan: paramiko.Channel, needle: bytes, deadline_s: float = 10.0) -> bytes:
    """Read a channel (stdout and stderr) until ``needle`` shows up; fail at the deadline."""
    buf = b""
    end = time.monotonic() + deadline_s
    while needle not in buf:
        if time.monotonic() > end:
            raise AssertionError(f"{needle!r} not seen; got {buf[-400:]!r}")
        if chan.recv_ready():
            buf += chan.recv(65536)
        elif chan.recv_stderr_ready():
            buf += chan.recv_stderr(65536)
        elif chan.exit_status_ready() and not chan.recv_ready():
            raise AssertionError(f"channel closed before {needle!r}; got {buf[-400:]!r}")
        else:
            time.sleep(0.01)
    return buf


def shell_ready(chan: paramiko.Channel) -> bytes:
    chan.send(b"echo ready-$((1+1))\n")
    return read_until(chan, b"ready-2")


async def sftp_client(w: World) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    """A paramiko SFTP client through the front door (10 s timeout on its channel)."""
    t = await asyncio.to_thread(paramiko_client, w)
    sftp = await asyncio.to_thread(paramiko.SFTPClient.from_transport, t)
    assert sftp is not None
    chan = sftp.get_channel()
    assert chan is not None
    chan.settimeout(10)
    return t, sftp


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """Clean-up, not a check: ask a client to exit, and kill it if it lingers."""
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
